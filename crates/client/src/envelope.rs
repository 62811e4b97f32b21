//! The Envelope Wrapper: the metadata every message carries, mapped onto AMQP properties and
//! headers so that any AMQP client (pika, kombu, the management UI) can read it.
//!
//! | envelope field | AMQP |
//! |---|---|
//! | `message_id` | `message_id` property |
//! | `timestamp` | `timestamp` property (seconds since the epoch) |
//! | `source` | `app_id` property |
//! | `message_type` | `type` property |
//! | `content_type` | `content_type` property |
//! | `correlation_id` | `correlation_id` property |
//! | `causation_id` | header [`CAUSATION_ID`] |
//! | `traceparent` | header [`TRACEPARENT`] (W3C trace context) |
//! | `reply_to` | `reply_to` property |

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::error::{Error, Result};
pub use crate::trace::TRACEPARENT;
use crate::trace::TraceContext;

/// Header naming the message that caused this one.
///
/// ```
/// assert_eq!(postroom_client::CAUSATION_ID, "x-causation-id");
/// ```
pub const CAUSATION_ID: &str = "x-causation-id";
/// Header the broker sets on a redelivered message: how many times it was returned before.
/// Postroom sets it on every queue; RabbitMQ only on quorum queues.
///
/// ```
/// assert_eq!(postroom_client::DELIVERY_COUNT, "x-delivery-count");
/// ```
pub const DELIVERY_COUNT: &str = "x-delivery-count";
/// Header with RabbitMQ's dead-lettering history.
///
/// ```
/// assert_eq!(postroom_client::X_DEATH, "x-death");
/// ```
pub const X_DEATH: &str = "x-death";

/// Metadata of one message: identity, origin, causality and trace.
///
/// [`Envelope::new`] fills `message_id` (a UUID v4), `timestamp` (now) and `traceparent`
/// (from the current span when [`TraceContextLayer`](crate::TraceContextLayer) is installed).
/// A message sent because of another is built with [`Envelope::caused_by`], which keeps the
/// conversation's correlation id and names the cause.
///
/// ```
/// use postroom_client::Envelope;
/// let order = Envelope::new().with_source("shop").with_correlation_id("checkout-7");
/// let reply = Envelope::caused_by(&order);
/// assert_eq!(reply.causation_id.as_deref(), Some(order.message_id.as_str()));
/// assert_eq!(reply.correlation_id.as_deref(), Some("checkout-7"));
/// assert_ne!(reply.message_id, order.message_id);
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Envelope {
    /// Unique id of the message (dedup and idempotency key).
    pub message_id: String,
    /// When it was created, in seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// The application that sent it.
    pub source: Option<String>,
    /// The type name of the body (see [`Message::MESSAGE_TYPE`](crate::Message::MESSAGE_TYPE)).
    pub message_type: Option<String>,
    /// The body's MIME type.
    pub content_type: Option<String>,
    /// The conversation this message belongs to.
    pub correlation_id: Option<String>,
    /// The id of the message that caused this one.
    pub causation_id: Option<String>,
    /// W3C trace context of the sender.
    pub traceparent: Option<String>,
    /// Where replies go (request-reply).
    pub reply_to: Option<String>,
    /// Other headers, sent as they are.
    pub headers: FieldTable,
}

impl Envelope {
    /// A fresh envelope: new id, now, the current trace context.
    ///
    /// ```
    /// let envelope = postroom_client::Envelope::new();
    /// assert_eq!(envelope.message_id.len(), 36);
    /// assert!(envelope.timestamp.is_some());
    /// ```
    pub fn new() -> Envelope {
        Envelope {
            message_id: uuid::Uuid::new_v4().to_string(),
            timestamp: Some(now_seconds()),
            traceparent: TraceContext::current().map(|context| context.to_traceparent()),
            ..Envelope::default()
        }
    }

    /// A fresh envelope for a message sent because of `cause`: the correlation id is carried
    /// over (or, when the cause has none, is the cause's id) and `causation_id` names the
    /// cause. The trace context is the current span's, else the cause's.
    ///
    /// ```
    /// use postroom_client::Envelope;
    /// let cause = Envelope::new();
    /// assert_eq!(Envelope::caused_by(&cause).causation_id, Some(cause.message_id.clone()));
    /// ```
    pub fn caused_by(cause: &Envelope) -> Envelope {
        let mut envelope = Envelope::new();
        envelope.correlation_id =
            Some(cause.correlation_id.clone().unwrap_or_else(|| cause.message_id.clone()));
        envelope.causation_id = Some(cause.message_id.clone());
        if envelope.traceparent.is_none() {
            envelope.traceparent = cause.traceparent.clone();
        }
        // The source stays unset: the effect is sent by this application, not the cause's
        // (the publisher fills in its configured source).
        envelope
    }

    /// Sets the message id.
    ///
    /// ```
    /// assert_eq!(postroom_client::Envelope::new().with_message_id("m-1").message_id, "m-1");
    /// ```
    pub fn with_message_id(mut self, id: impl Into<String>) -> Envelope {
        self.message_id = id.into();
        self
    }

    /// Sets the source (`app_id`).
    ///
    /// ```
    /// assert_eq!(postroom_client::Envelope::new().with_source("api").source.as_deref(), Some("api"));
    /// ```
    pub fn with_source(mut self, source: impl Into<String>) -> Envelope {
        self.source = Some(source.into());
        self
    }

    /// Sets the correlation id.
    ///
    /// ```
    /// let envelope = postroom_client::Envelope::new().with_correlation_id("c-1");
    /// assert_eq!(envelope.correlation_id.as_deref(), Some("c-1"));
    /// ```
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Envelope {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the causation id.
    ///
    /// ```
    /// let envelope = postroom_client::Envelope::new().with_causation_id("m-0");
    /// assert_eq!(envelope.causation_id.as_deref(), Some("m-0"));
    /// ```
    pub fn with_causation_id(mut self, id: impl Into<String>) -> Envelope {
        self.causation_id = Some(id.into());
        self
    }

    /// Sets the trace context.
    ///
    /// ```
    /// let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    /// assert_eq!(postroom_client::Envelope::new().with_traceparent(header).traceparent.as_deref(), Some(header));
    /// ```
    pub fn with_traceparent(mut self, traceparent: impl Into<String>) -> Envelope {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// Sets `reply_to`.
    ///
    /// ```
    /// let envelope = postroom_client::Envelope::new().with_reply_to(postroom_client::DIRECT_REPLY_TO);
    /// assert!(envelope.reply_to.is_some());
    /// ```
    pub fn with_reply_to(mut self, reply_to: impl Into<String>) -> Envelope {
        self.reply_to = Some(reply_to.into());
        self
    }

    /// Adds a string header.
    ///
    /// ```
    /// let envelope = postroom_client::Envelope::new().with_header("tenant", "eu-1");
    /// assert_eq!(envelope.header_str("tenant"), Some("eu-1".to_string()));
    /// ```
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Envelope {
        let value: String = value.into();
        self.headers.insert(ShortString::from(truncate(name)), AMQPValue::LongString(value.into()));
        self
    }

    /// A header as text (long or short string, or UTF-8 bytes).
    ///
    /// ```
    /// assert_eq!(postroom_client::Envelope::new().header_str("missing"), None);
    /// ```
    pub fn header_str(&self, name: &str) -> Option<String> {
        header_str(&self.headers, name)
    }

    /// A header as an unsigned integer, whatever integer type the sender used.
    ///
    /// ```
    /// use postroom_client::lapin::types::AMQPValue;
    /// let mut envelope = postroom_client::Envelope::new();
    /// envelope.headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
    /// assert_eq!(envelope.header_u64("x-delivery-count"), Some(2));
    /// ```
    pub fn header_u64(&self, name: &str) -> Option<u64> {
        header_u64(&self.headers, name)
    }

    /// Reads the envelope from received properties. Missing fields stay `None` (and a missing
    /// `message_id` is empty): the sender may not be this SDK.
    ///
    /// ```
    /// use lapin::BasicProperties;
    /// use postroom_client::Envelope;
    /// let sent = Envelope::new().with_source("api");
    /// let properties = sent.to_properties().unwrap();
    /// assert_eq!(Envelope::from_properties(&properties), sent);
    /// assert_eq!(Envelope::from_properties(&BasicProperties::default()).message_id, "");
    /// ```
    pub fn from_properties(properties: &BasicProperties) -> Envelope {
        let text = |value: &Option<ShortString>| value.as_ref().map(|s| s.as_str().to_string());
        let mut headers = properties.headers().clone().unwrap_or_default();
        let causation_id = take_header_str(&mut headers, CAUSATION_ID);
        let traceparent = take_header_str(&mut headers, TRACEPARENT);
        Envelope {
            message_id: text(properties.message_id()).unwrap_or_default(),
            timestamp: *properties.timestamp(),
            source: text(properties.app_id()),
            message_type: text(properties.kind()),
            content_type: text(properties.content_type()),
            correlation_id: text(properties.correlation_id()),
            causation_id,
            traceparent,
            reply_to: text(properties.reply_to()),
            headers,
        }
    }

    /// Writes the envelope as AMQP properties (without delivery mode, priority or expiration,
    /// which are publish options).
    ///
    /// ```
    /// let properties = postroom_client::Envelope::new().with_source("api").to_properties().unwrap();
    /// assert_eq!(properties.app_id().as_ref().map(|s| s.as_str()), Some("api"));
    /// ```
    ///
    /// # Errors
    /// [`Error::Invalid`] when a field does not fit an AMQP short string (255 bytes).
    pub fn to_properties(&self) -> Result<BasicProperties> {
        let mut properties =
            BasicProperties::default().with_message_id(short("message_id", &self.message_id)?);
        if let Some(timestamp) = self.timestamp {
            properties = properties.with_timestamp(timestamp);
        }
        if let Some(source) = &self.source {
            properties = properties.with_app_id(short("source", source)?);
        }
        if let Some(kind) = &self.message_type {
            properties = properties.with_type(short("message_type", kind)?);
        }
        if let Some(content_type) = &self.content_type {
            properties = properties.with_content_type(short("content_type", content_type)?);
        }
        if let Some(id) = &self.correlation_id {
            properties = properties.with_correlation_id(short("correlation_id", id)?);
        }
        if let Some(reply_to) = &self.reply_to {
            properties = properties.with_reply_to(short("reply_to", reply_to)?);
        }
        let mut headers = self.headers.clone();
        if let Some(id) = &self.causation_id {
            headers.insert(CAUSATION_ID.into(), AMQPValue::LongString(id.as_str().into()));
        }
        if let Some(traceparent) = &self.traceparent {
            headers.insert(TRACEPARENT.into(), AMQPValue::LongString(traceparent.as_str().into()));
        }
        if !headers.inner().is_empty() {
            properties = properties.with_headers(headers);
        }
        Ok(properties)
    }
}

/// Converts to an AMQP short string, refusing (instead of panicking on) more than 255 bytes.
pub(crate) fn short(field: &'static str, value: &str) -> Result<ShortString> {
    ShortString::try_new(value).map_err(|_| Error::Invalid {
        field,
        message: format!("{} bytes; at most 255", value.len()),
    })
}

fn truncate(name: &str) -> &str {
    if name.len() <= 255 {
        return name;
    }
    let mut end = 255;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

fn take_header_str(headers: &mut FieldTable, name: &str) -> Option<String> {
    let value = header_str(headers, name);
    if value.is_some() {
        let inner: std::collections::BTreeMap<ShortString, AMQPValue> = headers
            .inner()
            .iter()
            .filter(|(key, _)| key.as_str() != name)
            .map(clone_entry)
            .collect();
        *headers = FieldTable::from(inner);
    }
    value
}

fn clone_entry((key, value): (&ShortString, &AMQPValue)) -> (ShortString, AMQPValue) {
    (key.clone(), value.clone())
}

/// A header as text: long or short string, or UTF-8 bytes.
pub(crate) fn header_str(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(value) => Some(long_string_text(value)),
        AMQPValue::ShortString(value) => Some(value.as_str().to_string()),
        AMQPValue::ByteArray(bytes) => String::from_utf8(bytes.as_slice().to_vec()).ok(),
        _ => None,
    }
}

/// A header as an unsigned integer, whichever integer type the sender chose.
pub(crate) fn header_u64(headers: &FieldTable, name: &str) -> Option<u64> {
    match headers.inner().get(name)? {
        AMQPValue::ShortShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::Timestamp(v) => Some(*v),
        _ => None,
    }
}

fn long_string_text(value: &LongString) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

fn now_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_survives_a_round_trip_through_properties() {
        let envelope = Envelope {
            message_id: "m-1".into(),
            timestamp: Some(1_700_000_000),
            source: Some("scan-api".into()),
            message_type: Some("scan.requested".into()),
            content_type: Some("application/json".into()),
            correlation_id: Some("c-1".into()),
            causation_id: Some("m-0".into()),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            reply_to: Some("amq.rabbitmq.reply-to".into()),
            headers: FieldTable::default(),
        }
        .with_header("tenant", "eu");
        let properties = envelope.to_properties().unwrap();
        assert_eq!(Envelope::from_properties(&properties), envelope);
    }

    #[test]
    fn an_overlong_id_is_an_error_not_a_panic() {
        let envelope = Envelope::new().with_correlation_id("x".repeat(300));
        let error = envelope.to_properties().unwrap_err();
        assert!(matches!(error, Error::Invalid { field: "correlation_id", .. }), "{error}");
    }

    #[test]
    fn caused_by_uses_the_cause_id_when_it_has_no_correlation_id() {
        let cause = Envelope::new();
        let effect = Envelope::caused_by(&cause);
        assert_eq!(effect.correlation_id.as_deref(), Some(cause.message_id.as_str()));
    }

    #[test]
    fn integer_headers_of_any_width_are_read() {
        let mut headers = FieldTable::default();
        headers.insert("a".into(), AMQPValue::LongLongInt(3));
        headers.insert("b".into(), AMQPValue::ShortShortUInt(4));
        headers.insert("c".into(), AMQPValue::LongInt(-1));
        assert_eq!(header_u64(&headers, "a"), Some(3));
        assert_eq!(header_u64(&headers, "b"), Some(4));
        assert_eq!(header_u64(&headers, "c"), None);
    }
}
