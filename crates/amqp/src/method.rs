//! Every method of AMQP 0-9-1's connection, channel, access, exchange, queue, basic, tx and
//! confirm classes, generated from one table so that the struct, decoder and encoder of a
//! method can never disagree.
//!
//! Field names follow the spec (`reserved-1` is named for what it was: `ticket`,
//! `capabilities`, …). Consecutive `bool` fields are AMQP `bit`s packed into one octet.

use bytes::{BufMut, Bytes, BytesMut};

use crate::constants::{FRAME_END, FRAME_METHOD};
use crate::error::DecodeError;
use crate::table::FieldTable;
use crate::wire::{LongStr, Reader, ShortStr, Writer};

/// A type that appears as a method field.
pub trait Field: Sized {
    /// Reads the field.
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
    /// Writes the field.
    fn write(&self, w: &mut Writer<'_>);
}

macro_rules! primitive_field {
    ($ty:ty, $read:ident) => {
        impl Field for $ty {
            fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                r.$read()
            }
            fn write(&self, w: &mut Writer<'_>) {
                w.$read(*self)
            }
        }
    };
}

primitive_field!(u8, u8);
primitive_field!(u16, u16);
primitive_field!(u32, u32);
primitive_field!(u64, u64);
primitive_field!(bool, bit);

impl Field for ShortStr {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.short_str()
    }
    fn write(&self, w: &mut Writer<'_>) {
        w.short_str(self)
    }
}

impl Field for LongStr {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.long_str()
    }
    fn write(&self, w: &mut Writer<'_>) {
        w.long_str(&self.0)
    }
}

impl Field for FieldTable {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        FieldTable::decode(r)
    }
    fn write(&self, w: &mut Writer<'_>) {
        self.encode(w)
    }
}

macro_rules! methods {
    ($(
        $(#[$doc:meta])*
        $class:literal $method:literal $name:ident $spec:literal { $($field:ident : $ty:ty),* $(,)? }
    )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, PartialEq, Default)]
            #[allow(missing_docs)]
            pub struct $name { $(pub $field: $ty),* }

            impl From<$name> for Method {
                fn from(m: $name) -> Method {
                    Method::$name(m)
                }
            }
        )*

        /// Any AMQP 0-9-1 method.
        #[derive(Debug, Clone, PartialEq)]
        #[allow(missing_docs)]
        pub enum Method {
            $($name($name)),*
        }

        impl Method {
            /// The class id.
            pub fn class_id(&self) -> u16 {
                match self { $(Method::$name(_) => $class),* }
            }

            /// The method id within its class.
            pub fn method_id(&self) -> u16 {
                match self { $(Method::$name(_) => $method),* }
            }

            /// The spec's name, e.g. `basic.publish`.
            pub fn name(&self) -> &'static str {
                match self { $(Method::$name(_) => $spec),* }
            }

            /// Decodes a method frame payload. Trailing bytes are tolerated, as RabbitMQ does.
            ///
            /// # Errors
            /// [`DecodeError::UnknownMethod`] for an undefined class/method pair, and a syntax
            /// error when a field runs past the payload.
            pub fn decode(payload: &Bytes) -> Result<Method, DecodeError> {
                let mut r = Reader::new(payload);
                let class_id = r.u16()?;
                let method_id = r.u16()?;
                match (class_id, method_id) {
                    $(
                        ($class, $method) => Ok(Method::$name($name {
                            $($field: <$ty as Field>::read(&mut r)?),*
                        })),
                    )*
                    _ => Err(DecodeError::UnknownMethod { class_id, method_id }),
                }
            }

            /// Appends the method's payload (class id, method id, arguments) to `buf`.
            pub fn encode_payload(&self, buf: &mut BytesMut) {
                let mut w = Writer::new(buf);
                w.u16(self.class_id());
                w.u16(self.method_id());
                match self {
                    $(
                        #[allow(unused_variables)]
                        Method::$name(m) => { $(m.$field.write(&mut w);)* }
                    )*
                }
            }
        }
    };
}

impl Method {
    /// Appends a whole method frame on `channel` to `buf`.
    pub fn encode_frame(&self, channel: u16, buf: &mut BytesMut) {
        buf.put_u8(FRAME_METHOD);
        buf.put_u16(channel);
        let size_at = buf.len();
        buf.put_u32(0);
        self.encode_payload(buf);
        let size = (buf.len() - size_at - 4) as u32;
        buf[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
        buf.put_u8(FRAME_END);
    }

    /// Whether a content header and body frames follow this method.
    pub fn has_content(&self) -> bool {
        matches!(
            self,
            Method::BasicPublish(_)
                | Method::BasicReturn(_)
                | Method::BasicDeliver(_)
                | Method::BasicGetOk(_)
        )
    }
}

methods! {
    10 10 ConnectionStart "connection.start" {
        version_major: u8, version_minor: u8, server_properties: FieldTable,
        mechanisms: LongStr, locales: LongStr,
    }
    10 11 ConnectionStartOk "connection.start-ok" {
        client_properties: FieldTable, mechanism: ShortStr, response: LongStr, locale: ShortStr,
    }
    10 20 ConnectionSecure "connection.secure" { challenge: LongStr }
    10 21 ConnectionSecureOk "connection.secure-ok" { response: LongStr }
    10 30 ConnectionTune "connection.tune" { channel_max: u16, frame_max: u32, heartbeat: u16 }
    10 31 ConnectionTuneOk "connection.tune-ok" { channel_max: u16, frame_max: u32, heartbeat: u16 }
    10 40 ConnectionOpen "connection.open" { virtual_host: ShortStr, capabilities: ShortStr, insist: bool }
    10 41 ConnectionOpenOk "connection.open-ok" { known_hosts: ShortStr }
    10 50 ConnectionClose "connection.close" {
        reply_code: u16, reply_text: ShortStr, class_id: u16, method_id: u16,
    }
    10 51 ConnectionCloseOk "connection.close-ok" {}
    10 60 ConnectionBlocked "connection.blocked" { reason: ShortStr }
    10 61 ConnectionUnblocked "connection.unblocked" {}
    10 70 ConnectionUpdateSecret "connection.update-secret" { new_secret: LongStr, reason: ShortStr }
    10 71 ConnectionUpdateSecretOk "connection.update-secret-ok" {}

    20 10 ChannelOpen "channel.open" { out_of_band: ShortStr }
    20 11 ChannelOpenOk "channel.open-ok" { channel_id: LongStr }
    20 20 ChannelFlow "channel.flow" { active: bool }
    20 21 ChannelFlowOk "channel.flow-ok" { active: bool }
    20 40 ChannelClose "channel.close" {
        reply_code: u16, reply_text: ShortStr, class_id: u16, method_id: u16,
    }
    20 41 ChannelCloseOk "channel.close-ok" {}

    30 10 AccessRequest "access.request" {
        realm: ShortStr, exclusive: bool, passive: bool, active: bool, write: bool, read: bool,
    }
    30 11 AccessRequestOk "access.request-ok" { ticket: u16 }

    40 10 ExchangeDeclare "exchange.declare" {
        ticket: u16, exchange: ShortStr, kind: ShortStr, passive: bool, durable: bool,
        auto_delete: bool, internal: bool, nowait: bool, arguments: FieldTable,
    }
    40 11 ExchangeDeclareOk "exchange.declare-ok" {}
    40 20 ExchangeDelete "exchange.delete" { ticket: u16, exchange: ShortStr, if_unused: bool, nowait: bool }
    40 21 ExchangeDeleteOk "exchange.delete-ok" {}
    40 30 ExchangeBind "exchange.bind" {
        ticket: u16, destination: ShortStr, source: ShortStr, routing_key: ShortStr,
        nowait: bool, arguments: FieldTable,
    }
    40 31 ExchangeBindOk "exchange.bind-ok" {}
    40 40 ExchangeUnbind "exchange.unbind" {
        ticket: u16, destination: ShortStr, source: ShortStr, routing_key: ShortStr,
        nowait: bool, arguments: FieldTable,
    }
    40 51 ExchangeUnbindOk "exchange.unbind-ok" {}

    50 10 QueueDeclare "queue.declare" {
        ticket: u16, queue: ShortStr, passive: bool, durable: bool, exclusive: bool,
        auto_delete: bool, nowait: bool, arguments: FieldTable,
    }
    50 11 QueueDeclareOk "queue.declare-ok" { queue: ShortStr, message_count: u32, consumer_count: u32 }
    50 20 QueueBind "queue.bind" {
        ticket: u16, queue: ShortStr, exchange: ShortStr, routing_key: ShortStr,
        nowait: bool, arguments: FieldTable,
    }
    50 21 QueueBindOk "queue.bind-ok" {}
    50 30 QueuePurge "queue.purge" { ticket: u16, queue: ShortStr, nowait: bool }
    50 31 QueuePurgeOk "queue.purge-ok" { message_count: u32 }
    50 40 QueueDelete "queue.delete" {
        ticket: u16, queue: ShortStr, if_unused: bool, if_empty: bool, nowait: bool,
    }
    50 41 QueueDeleteOk "queue.delete-ok" { message_count: u32 }
    50 50 QueueUnbind "queue.unbind" {
        ticket: u16, queue: ShortStr, exchange: ShortStr, routing_key: ShortStr, arguments: FieldTable,
    }
    50 51 QueueUnbindOk "queue.unbind-ok" {}

    60 10 BasicQos "basic.qos" { prefetch_size: u32, prefetch_count: u16, global: bool }
    60 11 BasicQosOk "basic.qos-ok" {}
    60 20 BasicConsume "basic.consume" {
        ticket: u16, queue: ShortStr, consumer_tag: ShortStr, no_local: bool, no_ack: bool,
        exclusive: bool, nowait: bool, arguments: FieldTable,
    }
    60 21 BasicConsumeOk "basic.consume-ok" { consumer_tag: ShortStr }
    60 30 BasicCancel "basic.cancel" { consumer_tag: ShortStr, nowait: bool }
    60 31 BasicCancelOk "basic.cancel-ok" { consumer_tag: ShortStr }
    60 40 BasicPublish "basic.publish" {
        ticket: u16, exchange: ShortStr, routing_key: ShortStr, mandatory: bool, immediate: bool,
    }
    60 50 BasicReturn "basic.return" {
        reply_code: u16, reply_text: ShortStr, exchange: ShortStr, routing_key: ShortStr,
    }
    60 60 BasicDeliver "basic.deliver" {
        consumer_tag: ShortStr, delivery_tag: u64, redelivered: bool, exchange: ShortStr,
        routing_key: ShortStr,
    }
    60 70 BasicGet "basic.get" { ticket: u16, queue: ShortStr, no_ack: bool }
    60 71 BasicGetOk "basic.get-ok" {
        delivery_tag: u64, redelivered: bool, exchange: ShortStr, routing_key: ShortStr,
        message_count: u32,
    }
    60 72 BasicGetEmpty "basic.get-empty" { cluster_id: ShortStr }
    60 80 BasicAck "basic.ack" { delivery_tag: u64, multiple: bool }
    60 90 BasicReject "basic.reject" { delivery_tag: u64, requeue: bool }
    60 100 BasicRecoverAsync "basic.recover-async" { requeue: bool }
    60 110 BasicRecover "basic.recover" { requeue: bool }
    60 111 BasicRecoverOk "basic.recover-ok" {}
    60 120 BasicNack "basic.nack" { delivery_tag: u64, multiple: bool, requeue: bool }

    90 10 TxSelect "tx.select" {}
    90 11 TxSelectOk "tx.select-ok" {}
    90 20 TxCommit "tx.commit" {}
    90 21 TxCommitOk "tx.commit-ok" {}
    90 30 TxRollback "tx.rollback" {}
    90 31 TxRollbackOk "tx.rollback-ok" {}

    85 10 ConfirmSelect "confirm.select" { nowait: bool }
    85 11 ConfirmSelectOk "confirm.select-ok" {}
}
