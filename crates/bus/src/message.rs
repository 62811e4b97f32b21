//! What travels on the bus: [`Command`]s (one handler, an output) and [`Event`]s (any
//! number of handlers), and the [`ExternalEvent`] form in which an event leaves the service.

use std::any::Any;
use std::fmt;

use postroom_client::{Codec, Json};

use crate::error::BusError;

/// A request to change the system; exactly one handler, which returns `Output`.
///
/// ```
/// #[derive(Debug)]
/// struct Allocate { order_id: String, sku: String, qty: u32 }
/// impl postroom_bus::Command for Allocate {
///     type Output = String;
///     const NAME: &'static str = "Allocate";
/// }
/// ```
pub trait Command: Any + Send + fmt::Debug {
    /// What the handler returns to the caller.
    type Output: Send + 'static;
    /// The command's name, for logs and errors.
    const NAME: &'static str;
}

/// Something that happened; any number of handlers react to it.
///
/// An event that other services should hear of returns its [`ExternalEvent`] form from
/// [`to_external`](Event::to_external): the unit of work writes that to the outbox in the
/// same transaction as the state change, and the relay publishes it.
///
/// ```
/// use postroom_bus::{BusError, Event, ExternalEvent};
///
/// #[derive(Debug, serde::Serialize, serde::Deserialize)]
/// struct Allocated { order_id: String, batch_ref: String }
/// impl postroom_client::Message for Allocated {
///     const EXCHANGE: &'static str = "allocation";
///     const MESSAGE_TYPE: &'static str = "allocation.allocated";
///     fn routing_key(&self) -> std::borrow::Cow<'_, str> { "line_allocated".into() }
/// }
/// impl Event for Allocated {
///     fn name(&self) -> &'static str { "Allocated" }
///     fn to_external(&self) -> Result<Option<ExternalEvent>, BusError> {
///         ExternalEvent::json(self, &self.order_id).map(Some)
///     }
/// }
/// ```
pub trait Event: Any + Send + Sync + fmt::Debug {
    /// The event's name, for logs.
    fn name(&self) -> &'static str;

    /// The form in which the event leaves the service, if it does (default: it does not).
    ///
    /// # Errors
    /// [`BusError::Encode`] when the event cannot be encoded.
    fn to_external(&self) -> Result<Option<ExternalEvent>, BusError> {
        Ok(None)
    }
}

/// An event encoded for the broker: where it goes, what it is, which aggregate it belongs to
/// (the relay keeps each aggregate's events in order) and its body.
///
/// ```
/// let event = postroom_bus::ExternalEvent::json(&Ping, "agg-1").unwrap();
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
/// # impl postroom_client::Message for Ping {
/// #     const EXCHANGE: &'static str = "e"; const MESSAGE_TYPE: &'static str = "ping";
/// #     fn routing_key(&self) -> std::borrow::Cow<'_, str> { "k".into() }
/// # }
/// assert_eq!((event.exchange.as_str(), event.routing_key.as_str()), ("e", "k"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExternalEvent {
    /// The exchange to publish to.
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
    /// The type name (AMQP `type` property).
    pub message_type: String,
    /// The aggregate the event belongs to.
    pub aggregate_id: String,
    /// The body's MIME type.
    pub content_type: String,
    /// The encoded body.
    pub payload: Vec<u8>,
}

impl ExternalEvent {
    /// Encodes a typed [`postroom_client::Message`] as JSON, routed as the type says.
    ///
    /// ```
    /// let event = postroom_bus::ExternalEvent::json(&Ping, "agg-1").unwrap();
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
    /// # impl postroom_client::Message for Ping {
    /// #     const EXCHANGE: &'static str = "e"; const MESSAGE_TYPE: &'static str = "ping";
    /// #     fn routing_key(&self) -> std::borrow::Cow<'_, str> { "k".into() }
    /// # }
    /// assert_eq!(event.message_type, "ping");
    /// ```
    ///
    /// # Errors
    /// [`BusError::Encode`] when serialization fails.
    pub fn json<M: postroom_client::Message>(
        message: &M,
        aggregate_id: &str,
    ) -> Result<ExternalEvent, BusError> {
        let payload = Json.encode(message).map_err(|error| BusError::Encode {
            message_type: M::MESSAGE_TYPE.to_string(),
            message: error.to_string(),
        })?;
        Ok(ExternalEvent {
            exchange: M::EXCHANGE.to_string(),
            routing_key: message.routing_key().into_owned(),
            message_type: M::MESSAGE_TYPE.to_string(),
            aggregate_id: aggregate_id.to_string(),
            content_type: Json.content_type().to_string(),
            payload,
        })
    }
}
