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
    pub fn with_envelope(mut self, envelope: Envelope) -> Incoming {
        self.envelope = envelope;
        self
    }

    /// Sets the exchange and routing key.
    pub fn with_routing(mut self, exchange: &str, routing_key: &str) -> Incoming {
        self.exchange = exchange.to_string();
        self.routing_key = routing_key.to_string();
        self
    }

    /// Sets the delivery count (and `redelivered` when it is above 0).
    pub fn with_delivery_count(mut self, count: u64) -> Incoming {
        self.delivery_count = count;
        self.redelivered = count > 0;
        self
    }

    /// Decodes the body with `codec`.
    ///
    /// # Errors
    /// [`Error::Codec`](crate::Error::Codec) when the body is not a valid `T`.
    pub fn decode<T: DeserializeOwned, C: Codec>(&self, codec: &C) -> Result<T> {
        codec.decode(&self.body)
    }

    /// Decodes the body as JSON.
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
