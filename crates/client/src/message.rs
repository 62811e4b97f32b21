//! Typed routing: a message type knows its exchange, its routing key and its type name.

use std::borrow::Cow;

/// A message type that knows where it goes.
///
/// The publisher reads the exchange and routing key from here, and writes
/// [`MESSAGE_TYPE`](Message::MESSAGE_TYPE) to the AMQP `type` property so that consumers (and
/// people reading a dead-letter queue) can tell what a body is without parsing it. The routing
/// key may depend on the content, which is how a Content-Based Router is fed.
///
/// ```
/// use std::borrow::Cow;
/// use postroom_client::Message;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct ScanRequested { image_url: String, priority: String }
///
/// impl Message for ScanRequested {
///     const EXCHANGE: &'static str = "scan";
///     const MESSAGE_TYPE: &'static str = "scan.requested";
///     fn routing_key(&self) -> Cow<'_, str> {
///         Cow::Owned(format!("scan.{}", self.priority))
///     }
/// }
///
/// let m = ScanRequested { image_url: "s3://a.png".into(), priority: "high".into() };
/// assert_eq!(m.routing_key(), "scan.high");
/// ```
pub trait Message: serde::Serialize + serde::de::DeserializeOwned + Send + Sync {
    /// The exchange the message is published to (`""` is the default exchange, where the
    /// routing key names a queue).
    const EXCHANGE: &'static str;
    /// A stable name for the type, written to the `type` property.
    const MESSAGE_TYPE: &'static str;

    /// The routing key for this value.
    fn routing_key(&self) -> Cow<'_, str>;
}
