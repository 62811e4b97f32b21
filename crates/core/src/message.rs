//! Messages as the broker holds them.

use std::sync::Arc;

use bytes::Bytes;
use postroom_amqp::{BasicProperties, ShortStr};

/// A published message. Immutable once routed and shared by every queue it was routed to
/// (`Arc<Message>`); a queue that must change a header (dead-lettering, direct reply-to)
/// makes a new one.
#[derive(Debug, Clone)]
pub struct Message {
    /// The exchange it was published to.
    pub exchange: ShortStr,
    /// The routing key it was published with.
    pub routing_key: ShortStr,
    /// The decoded properties.
    pub properties: BasicProperties,
    /// The encoded properties, delivered byte for byte.
    pub raw_properties: Bytes,
    /// The body.
    pub body: Bytes,
}

impl Message {
    /// A message whose raw properties are encoded from `properties`.
    pub fn new(
        exchange: ShortStr,
        routing_key: ShortStr,
        properties: BasicProperties,
        body: Bytes,
    ) -> Message {
        let raw_properties = properties.to_bytes();
        Message {
            exchange,
            routing_key,
            properties,
            raw_properties,
            body,
        }
    }

    /// A copy with different properties (re-encoded).
    pub fn with_properties(&self, properties: BasicProperties) -> Message {
        Message::new(
            self.exchange.clone(),
            self.routing_key.clone(),
            properties,
            self.body.clone(),
        )
    }

    /// Whether the publisher asked for persistence.
    pub fn is_persistent(&self) -> bool {
        self.properties.is_persistent()
    }

    /// Body size in bytes.
    pub fn size(&self) -> usize {
        self.body.len()
    }
}

/// A message waiting in a queue, with its delivery history.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// The message.
    pub message: Arc<Message>,
    /// Whether it was delivered before (the AMQP `redelivered` flag).
    pub redelivered: bool,
    /// How many times it was delivered and then returned (requeued) to the queue.
    pub delivery_count: u32,
}

impl QueuedMessage {
    /// A message entering a queue for the first time.
    pub fn new(message: Arc<Message>) -> QueuedMessage {
        QueuedMessage {
            message,
            redelivered: false,
            delivery_count: 0,
        }
    }
}
