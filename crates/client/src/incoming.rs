//! [`Incoming`]: a received message as handlers see it, with no AMQP machinery attached
//! (the acknowledgement stays with the worker), so handlers are tested without a broker.

use lapin::Acker;
use lapin::message::Delivery;
use serde::de::DeserializeOwned;

use crate::codec::{Codec, Json};
use crate::envelope::{DELIVERY_COUNT, Envelope};
use crate::error::Result;

/// A received message: body, envelope and where it came from.
///
/// ```
/// use postroom_client::Incoming;
/// let message = Incoming::new(br#"{"jti":"abc"}"#.to_vec()).with_routing("auth", "token.revoked");
/// let body: serde_json::Value = message.json().unwrap();
/// assert_eq!(body["jti"], "abc");
/// assert_eq!(message.delivery_count, 0);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Incoming {
    /// The body.
    pub body: Vec<u8>,
    /// The metadata (see [`Envelope::from_properties`]).
    pub envelope: Envelope,
    /// The exchange it was published to.
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// Whether the broker delivered it before.
    pub redelivered: bool,
    /// How many times it was returned before (`x-delivery-count`; 0 when absent).
    pub delivery_count: u64,
}

impl Incoming {
    /// A message with `body` and a fresh envelope (for tests and in-process use).
    ///
    /// ```
    /// let message = postroom_client::Incoming::new(b"hi".to_vec());
    /// assert!(!message.envelope.message_id.is_empty());
    /// ```
    pub fn new(body: Vec<u8>) -> Incoming {
        Incoming {
            body,
            envelope: Envelope::new(),
            exchange: String::new(),
            routing_key: String::new(),
            redelivered: false,
            delivery_count: 0,
        }
    }

    /// Replaces the envelope.
    ///
    /// ```
    /// use postroom_client::{Envelope, Incoming};
    /// let message = Incoming::new(vec![]).with_envelope(Envelope::new().with_message_id("m-1"));
    /// assert_eq!(message.envelope.message_id, "m-1");
    /// ```
    pub fn with_envelope(mut self, envelope: Envelope) -> Incoming {
        self.envelope = envelope;
        self
    }

    /// Sets the exchange and routing key.
    ///
    /// ```
    /// let message = postroom_client::Incoming::new(vec![]).with_routing("scan", "scan.high");
    /// assert_eq!(message.routing_key, "scan.high");
    /// ```
    pub fn with_routing(mut self, exchange: &str, routing_key: &str) -> Incoming {
        self.exchange = exchange.to_string();
        self.routing_key = routing_key.to_string();
        self
    }

    /// Sets the delivery count (and `redelivered` when it is above 0).
    ///
    /// ```
    /// let message = postroom_client::Incoming::new(vec![]).with_delivery_count(2);
    /// assert!(message.redelivered);
    /// ```
    pub fn with_delivery_count(mut self, count: u64) -> Incoming {
        self.delivery_count = count;
        self.redelivered = count > 0;
        self
    }

    /// Decodes the body with `codec`.
    ///
    /// ```
    /// use postroom_client::{Incoming, Json};
    /// let n: u32 = Incoming::new(b"7".to_vec()).decode(&Json).unwrap();
    /// assert_eq!(n, 7);
    /// ```
    ///
    /// # Errors
    /// [`Error::Codec`](crate::Error::Codec) when the body is not a valid `T`.
    pub fn decode<T: DeserializeOwned, C: Codec>(&self, codec: &C) -> Result<T> {
        codec.decode(&self.body)
    }

    /// Decodes the body as JSON.
    ///
    /// ```
    /// let flag: bool = postroom_client::Incoming::new(b"true".to_vec()).json().unwrap();
    /// assert!(flag);
    /// ```
    ///
    /// # Errors
    /// [`Error::Codec`](crate::Error::Codec) when the body is not a valid `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        self.decode(&Json)
    }

    /// Splits a lapin delivery into the message and its acknowledger.
    pub(crate) fn from_delivery(delivery: Delivery) -> (Incoming, Acker) {
        let envelope = Envelope::from_properties(&delivery.properties);
        let delivery_count = envelope.header_u64(DELIVERY_COUNT).unwrap_or(0);
        let incoming = Incoming {
            body: delivery.data,
            envelope,
            exchange: delivery.exchange.to_string(),
            routing_key: delivery.routing_key.to_string(),
            redelivered: delivery.redelivered,
            delivery_count,
        };
        (incoming, delivery.acker)
    }
}
