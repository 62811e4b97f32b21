//! Messages as the broker holds them.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use postroom_amqp::wire::Reader;
use postroom_amqp::{BasicProperties, DecodeError, ShortStr};
use postroom_store::Seq;

/// A published message. Immutable once routed and shared by every queue it was routed to
/// (`Arc<Message>`); a queue that must change a header (dead-lettering, direct reply-to)
/// makes a new one.
///
/// Properties are kept encoded, as received: a message waiting in a queue costs its bytes
/// plus a few words, not a decoded property struct; [`Message::properties`] decodes them
/// for the rare paths that need more than [`Message::is_persistent`].
#[derive(Debug, Clone)]
pub struct Message {
    /// The exchange it was published to.
    pub exchange: ShortStr,
    /// The routing key it was published with.
    pub routing_key: ShortStr,
    /// The encoded properties, delivered byte for byte.
    pub raw_properties: Bytes,
    /// The body.
    pub body: Bytes,
    /// Whether the publisher asked for persistence (`delivery_mode = 2`).
    persistent: bool,
    /// Its own time to live in ms (the `expiration` property), if it has a valid one.
    ttl: Option<u64>,
    /// The `priority` property (0 if unset).
    priority: u8,
    /// When it was published, ms since the Unix epoch (0: not known, a message stored
    /// before arrival times were kept). TTLs count from here. Set with
    /// [`Message::stamp_arrival`].
    arrived_at: u64,
    /// The store encoding, when the fields above are slices of it (a message decoded from
    /// it): the store then writes these bytes as they are.
    encoded: Option<Bytes>,
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
        let persistent = properties.is_persistent();
        let ttl = expiration_ms(&properties);
        Message {
            exchange,
            routing_key,
            raw_properties,
            body,
            persistent,
            ttl,
            priority: properties.priority.unwrap_or(0),
            arrived_at: 0,
            encoded: None,
        }
    }

    /// A message from its parts as a content header carried them: `raw_properties` must be
    /// the encoding of `properties`.
    pub fn from_parts(
        exchange: ShortStr,
        routing_key: ShortStr,
        properties: &BasicProperties,
        raw_properties: Bytes,
        body: Bytes,
    ) -> Message {
        let persistent = properties.is_persistent();
        let ttl = expiration_ms(properties);
        Message {
            exchange,
            routing_key,
            raw_properties,
            body,
            persistent,
            ttl,
            priority: properties.priority.unwrap_or(0),
            arrived_at: 0,
            encoded: None,
        }
    }

    /// Records when it arrived (ms since the epoch). A store encoding made before no
    /// longer matches, so it is dropped (the next [`Message::encoded`] makes a new one).
    pub fn stamp_arrival(&mut self, now_ms: u64) {
        self.arrived_at = now_ms;
        self.encoded = None;
    }

    /// The `priority` property (0 if unset).
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// Its own time to live in ms, from the `expiration` property.
    pub fn ttl(&self) -> Option<u64> {
        self.ttl
    }

    /// The decoded properties (empty if the stored encoding does not decode, which a
    /// message that passed the codec cannot do).
    pub fn properties(&self) -> BasicProperties {
        BasicProperties::decode(&mut Reader::new(&self.raw_properties)).unwrap_or_default()
    }

    /// A copy with different properties (re-encoded), arrived at the same time.
    pub fn with_properties(&self, properties: BasicProperties) -> Message {
        let mut copy = Message::new(
            self.exchange.clone(),
            self.routing_key.clone(),
            properties,
            self.body.clone(),
        );
        copy.arrived_at = self.arrived_at;
        copy
    }

    /// When it arrived, ms since the Unix epoch (0: not known).
    pub fn arrived_at(&self) -> u64 {
        self.arrived_at
    }

    /// Whether the publisher asked for persistence.
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// Body size in bytes.
    pub fn size(&self) -> usize {
        self.body.len()
    }

    /// Encodes the message as the store keeps it: [`ARRIVAL_MARK`] and the arrival time
    /// (when known), exchange, routing key, properties (as received), body.
    pub fn encode(&self) -> BytesMut {
        let mut buf = BytesMut::with_capacity(
            10 + 2
                + self.exchange.len()
                + self.routing_key.len()
                + 4
                + self.raw_properties.len()
                + self.body.len(),
        );
        if self.arrived_at != 0 {
            buf.put_slice(&ARRIVAL_MARK);
            buf.put_u64(self.arrived_at);
        }
        buf.put_u8(self.exchange.len() as u8);
        buf.put_slice(self.exchange.as_bytes());
        buf.put_u8(self.routing_key.len() as u8);
        buf.put_slice(self.routing_key.as_bytes());
        buf.put_u32(self.raw_properties.len() as u32);
        buf.put_slice(&self.raw_properties);
        buf.put_slice(&self.body);
        buf
    }

    /// Decodes what [`Message::encode`] wrote. The body stays a slice of `data`.
    ///
    /// # Errors
    /// A [`DecodeError`] if the bytes are not an encoded message.
    pub fn decode(data: &Bytes) -> Result<Message, DecodeError> {
        let mut r = Reader::new(data);
        let mut arrived_at = 0;
        if data.starts_with(&ARRIVAL_MARK) {
            r.bytes(ARRIVAL_MARK.len(), "arrival mark")?;
            arrived_at = r.u64()?;
        }
        let exchange = r.short_str()?;
        let routing_key = r.short_str()?;
        let props_len = r.u32()? as usize;
        let raw_properties = r.bytes(props_len, "properties")?;
        let properties = BasicProperties::decode(&mut Reader::new(&raw_properties))?;
        let body = r.bytes(r.remaining(), "body")?;
        let mut message =
            Message::from_parts(exchange, routing_key, &properties, raw_properties, body);
        message.encoded = Some(data.clone());
        message.arrived_at = arrived_at;
        Ok(message)
    }

    /// The store encoding ([`Message::encode`]), without copying when the message was
    /// decoded from one.
    pub fn encoded(&self) -> Bytes {
        match &self.encoded {
            Some(encoded) => encoded.clone(),
            None => self.encode().freeze(),
        }
    }
}

/// Opens a stored message that carries its arrival time. Unambiguous: a message without
/// one starts with its exchange name's length, and a 255-byte name cannot start with 0x01
/// (exchange names are letters, digits, `-`, `_`, `.` and `:`).
pub const ARRIVAL_MARK: [u8; 2] = [0xFF, 0x01];

/// The `expiration` property as ms, if it is a valid one (a non-negative integer).
pub fn expiration_ms(properties: &BasicProperties) -> Option<u64> {
    properties.expiration.as_deref().and_then(|e| e.parse::<u64>().ok())
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
    /// Its sequence number in the store, if it is persisted for this queue.
    pub stored: Option<Seq>,
}

impl QueuedMessage {
    /// A message entering a queue for the first time.
    pub fn new(message: Arc<Message>) -> QueuedMessage {
        QueuedMessage { message, redelivered: false, delivery_count: 0, stored: None }
    }
}
