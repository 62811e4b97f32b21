//! Queue policies: the behaviour a queue's arguments ask for (dead-lettering, delivery
//! limit, length limits), parsed and validated in one place, independent of where the
//! setting came from (declare arguments now; HTTP or CLI policies later build the same
//! [`QueuePolicy`]).

use postroom_amqp::{FieldTable, FieldValue, ShortStr};

use crate::error::{BrokerError, Result};

/// `x-dead-letter-exchange`: where rejected, expired, dropped or over-delivered messages go.
pub const DEAD_LETTER_EXCHANGE: &str = "x-dead-letter-exchange";
/// `x-dead-letter-routing-key`: the routing key they go with (default: their own).
pub const DEAD_LETTER_ROUTING_KEY: &str = "x-dead-letter-routing-key";
/// `x-delivery-limit`: returns allowed before a message is dead-lettered.
pub const DELIVERY_LIMIT: &str = "x-delivery-limit";
/// `x-max-length`: most ready messages.
pub const MAX_LENGTH: &str = "x-max-length";
/// `x-max-length-bytes`: most ready body bytes.
pub const MAX_LENGTH_BYTES: &str = "x-max-length-bytes";
/// `x-overflow`: what a full queue does with a new message.
pub const OVERFLOW: &str = "x-overflow";
/// `x-message-ttl`: how long a message may wait, in ms.
pub const MESSAGE_TTL: &str = "x-message-ttl";
/// `x-expires`: how long the queue may stay unused, in ms.
pub const EXPIRES: &str = "x-expires";
/// `x-max-priority`: the highest message priority the queue orders by.
pub const MAX_PRIORITY: &str = "x-max-priority";
/// `x-single-active-consumer`: deliver to one consumer at a time.
pub const SINGLE_ACTIVE_CONSUMER: &str = "x-single-active-consumer";
/// `x-queue-type`: `classic` or `quorum` (both behave the same here).
pub const QUEUE_TYPE: &str = "x-queue-type";

/// Header carrying how often a message was returned before this delivery.
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// What a full queue does with a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop (dead-letter, reason `maxlen`) the oldest messages to make room.
    #[default]
    DropHead,
    /// Refuse the new message: the publisher gets `basic.nack`.
    RejectPublish,
    /// Refuse it and dead-letter it (reason `maxlen`).
    RejectPublishDlx,
}

/// The behaviour a queue's settings ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueuePolicy {
    /// Dead-letter exchange.
    pub dead_letter_exchange: Option<ShortStr>,
    /// Dead-letter routing key.
    pub dead_letter_routing_key: Option<ShortStr>,
    /// Returns allowed before dead-lettering (reason `delivery_limit`).
    pub delivery_limit: Option<u32>,
    /// Most ready messages.
    pub max_length: Option<u64>,
    /// Most ready body bytes.
    pub max_length_bytes: Option<u64>,
    /// What a full queue does.
    pub overflow: Overflow,
    /// Message TTL in ms.
    pub message_ttl: Option<u64>,
    /// Queue TTL in ms.
    pub expires: Option<u64>,
    /// Highest priority.
    pub max_priority: Option<u8>,
    /// One consumer at a time.
    pub single_active_consumer: bool,
}

/// Why a message was dead-lettered (the `reason` of its `x-death` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// Rejected or nacked with `requeue = false`.
    Rejected,
    /// Its TTL passed.
    Expired,
    /// Dropped for the queue's length limit.
    MaxLength,
    /// Returned more often than the delivery limit allows.
    DeliveryLimit,
}

impl DeadLetterReason {
    /// The name RabbitMQ uses in `x-death`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::Expired => "expired",
            DeadLetterReason::MaxLength => "maxlen",
            DeadLetterReason::DeliveryLimit => "delivery_limit",
        }
    }
}

impl QueuePolicy {
    /// Reads the policy from queue declare arguments. Arguments it does not know are left
    /// alone (as RabbitMQ does).
    ///
    /// # Errors
    /// `PreconditionFailed` naming the argument, for a value of the wrong type or range.
    pub fn from_arguments(arguments: &FieldTable, queue: &str, vhost: &str) -> Result<QueuePolicy> {
        let invalid = |key: &str, why: &str, value: &FieldValue| {
            BrokerError::PreconditionFailed(format!(
                "invalid arg '{key}' for queue '{queue}' in vhost '{vhost}': {why}, got {value:?}"
            ))
        };
        let string = |key: &str| -> Result<Option<ShortStr>> {
            match arguments.get(key) {
                None => Ok(None),
                Some(value) => match value.as_str() {
                    Some(s) if s.len() <= 255 => Ok(Some(ShortStr::from(s))),
                    _ => Err(invalid(key, "expected a string of at most 255 bytes", value)),
                },
            }
        };
        let integer = |key: &str, min: i64, max: i64| -> Result<Option<i64>> {
            match arguments.get(key) {
                None => Ok(None),
                Some(value) => match value.as_int() {
                    Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                    _ => Err(invalid(key, &format!("expected an integer in {min}..={max}"), value)),
                },
            }
        };
        let overflow = match arguments.get(OVERFLOW) {
            None => Overflow::DropHead,
            Some(value) => match value.as_str() {
                Some("drop-head") => Overflow::DropHead,
                Some("reject-publish") => Overflow::RejectPublish,
                Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                _ => {
                    return Err(invalid(
                        OVERFLOW,
                        "expected drop-head, reject-publish or reject-publish-dlx",
                        value,
                    ));
                }
            },
        };
        let single_active_consumer = match arguments.get(SINGLE_ACTIVE_CONSUMER) {
            None => false,
            Some(value) => value
                .as_bool()
                .ok_or_else(|| invalid(SINGLE_ACTIVE_CONSUMER, "expected a boolean", value))?,
        };
        if let Some(value) = arguments.get(QUEUE_TYPE)
            && !matches!(value.as_str(), Some("classic" | "quorum"))
        {
            return Err(invalid(QUEUE_TYPE, "expected classic or quorum", value));
        }
        let dead_letter_routing_key = string(DEAD_LETTER_ROUTING_KEY)?;
        let dead_letter_exchange = string(DEAD_LETTER_EXCHANGE)?;
        if dead_letter_routing_key.is_some() && dead_letter_exchange.is_none() {
            // Matches RabbitMQ: a routing key without an exchange is refused.
            return Err(BrokerError::PreconditionFailed(format!(
                "invalid arg '{DEAD_LETTER_ROUTING_KEY}' for queue '{queue}' in vhost '{vhost}': \
                 {DEAD_LETTER_EXCHANGE} is not set"
            )));
        }
        let u32_max = i64::from(u32::MAX);
        Ok(QueuePolicy {
            dead_letter_exchange,
            dead_letter_routing_key,
            delivery_limit: integer(DELIVERY_LIMIT, 0, u32_max)?.map(|n| n as u32),
            max_length: integer(MAX_LENGTH, 0, i64::MAX)?.map(|n| n as u64),
            max_length_bytes: integer(MAX_LENGTH_BYTES, 0, i64::MAX)?.map(|n| n as u64),
            overflow,
            message_ttl: integer(MESSAGE_TTL, 0, u32_max)?.map(|n| n as u64),
            expires: integer(EXPIRES, 1, u32_max)?.map(|n| n as u64),
            max_priority: integer(MAX_PRIORITY, 1, 255)?.map(|n| n as u8),
            single_active_consumer,
        })
    }

    /// Whether a queue of `count` messages and `bytes` body bytes is over its length limits.
    pub fn over_limit(&self, count: u64, bytes: u64) -> bool {
        self.max_length.is_some_and(|max| count > max)
            || self.max_length_bytes.is_some_and(|max| bytes > max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
        entries.iter().map(|(k, v)| (ShortStr::from(*k), v.clone())).collect()
    }

    #[test]
    fn arguments_become_a_policy() {
        let args = table(&[
            (DEAD_LETTER_EXCHANGE, FieldValue::string("dlx")),
            (DEAD_LETTER_ROUTING_KEY, FieldValue::string("dead")),
            (DELIVERY_LIMIT, FieldValue::I64(3)),
            (MAX_LENGTH, FieldValue::I32(10)),
            (OVERFLOW, FieldValue::string("reject-publish")),
        ]);
        let policy = QueuePolicy::from_arguments(&args, "q", "/").unwrap();
        assert_eq!(policy.dead_letter_exchange.as_deref(), Some("dlx"));
        assert_eq!(policy.dead_letter_routing_key.as_deref(), Some("dead"));
        assert_eq!(policy.delivery_limit, Some(3));
        assert_eq!(policy.max_length, Some(10));
        assert_eq!(policy.overflow, Overflow::RejectPublish);
        assert!(policy.over_limit(11, 0) && !policy.over_limit(10, 1 << 40));
    }

    #[test]
    fn a_bad_value_is_refused_naming_the_argument() {
        for (key, value) in [
            (MAX_LENGTH, FieldValue::I64(-1)),
            (MAX_LENGTH, FieldValue::string("ten")),
            (DELIVERY_LIMIT, FieldValue::Bool(true)),
            (OVERFLOW, FieldValue::string("drop-tail")),
            (MAX_PRIORITY, FieldValue::I32(256)),
            (MAX_PRIORITY, FieldValue::I32(0)),
            (EXPIRES, FieldValue::I32(0)),
            (DEAD_LETTER_EXCHANGE, FieldValue::I32(1)),
            (SINGLE_ACTIVE_CONSUMER, FieldValue::string("yes")),
            (QUEUE_TYPE, FieldValue::string("stream-ish")),
        ] {
            let error = QueuePolicy::from_arguments(&table(&[(key, value)]), "q", "/").unwrap_err();
            let BrokerError::PreconditionFailed(text) = error else { panic!("{error:?}") };
            assert!(text.contains(key), "{text}");
        }
        let only_key = table(&[(DEAD_LETTER_ROUTING_KEY, FieldValue::string("k"))]);
        assert!(QueuePolicy::from_arguments(&only_key, "q", "/").is_err());
    }
}
