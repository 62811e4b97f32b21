//! Queue policies: the behaviour a queue's arguments ask for (dead-lettering, delivery
//! limit, length limits), parsed and validated in one place, independent of where the
//! setting came from (declare arguments now; HTTP or CLI policies later build the same
//! [`QueuePolicy`]).

use postroom_amqp::{FieldTable, FieldValue, ShortStr};

use crate::dedup::DedupPolicy;
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

/// `x-retry-initial-delay`: the first retry's delay in ms; turns retry with backoff on.
pub const RETRY_INITIAL_DELAY: &str = "x-retry-initial-delay";
/// `x-retry-multiplier`: each retry waits this many times longer than the one before.
pub const RETRY_MULTIPLIER: &str = "x-retry-multiplier";
/// `x-retry-max-delay`: the longest delay in ms.
pub const RETRY_MAX_DELAY: &str = "x-retry-max-delay";
/// `x-retry-jitter`: the fraction of a delay it may randomly vary by (0.0–1.0).
pub const RETRY_JITTER: &str = "x-retry-jitter";

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
    /// Retry with backoff for messages nacked or rejected with `requeue = true`.
    pub retry: Option<RetryPolicy>,
    /// Deduplication of published messages (`x-message-deduplication`).
    pub dedup: Option<DedupPolicy>,
}

/// Postroom's retry with exponential backoff: a message returned with `requeue = true` for
/// the n-th time becomes ready again after `min(max, initial × multiplier^(n-1))`, varied
/// by up to `± jitter` of that.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// First delay, ms.
    pub initial_delay: u64,
    /// Growth per retry (≥ 1).
    pub multiplier: f64,
    /// Longest delay, ms.
    pub max_delay: u64,
    /// Random variation, a fraction of the delay (0–1).
    pub jitter: f64,
}

impl Eq for RetryPolicy {}

impl RetryPolicy {
    /// The delay before retry number `attempt` (1 for the first), with `random` (any
    /// 64-bit value) choosing the jitter.
    pub fn delay(&self, attempt: u32, random: u64) -> u64 {
        let exponent = attempt.saturating_sub(1).min(1024) as i32;
        let base = (self.initial_delay as f64 * self.multiplier.powi(exponent))
            .min(self.max_delay as f64)
            .max(0.0);
        // A uniform number in [-1, 1).
        let unit = (random >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
        (base + base * self.jitter * unit).max(0.0).round() as u64
    }
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
        let float = |key: &str, min: f64, max: f64| -> Result<Option<f64>> {
            match arguments.get(key) {
                None => Ok(None),
                Some(value) => match value.as_f64() {
                    Some(x) if (min..=max).contains(&x) => Ok(Some(x)),
                    _ => Err(invalid(key, &format!("expected a number in {min}..={max}"), value)),
                },
            }
        };
        let initial_delay = integer(RETRY_INITIAL_DELAY, 0, u32_max)?;
        let multiplier = float(RETRY_MULTIPLIER, 1.0, 1000.0)?;
        let max_delay = integer(RETRY_MAX_DELAY, 0, u32_max)?;
        let jitter = float(RETRY_JITTER, 0.0, 1.0)?;
        let retry = match initial_delay {
            Some(initial) => Some(RetryPolicy {
                initial_delay: initial as u64,
                multiplier: multiplier.unwrap_or(2.0),
                max_delay: max_delay.map_or(u32::MAX as u64, |m| m as u64),
                jitter: jitter.unwrap_or(0.1),
            }),
            None if multiplier.is_some() || max_delay.is_some() || jitter.is_some() => {
                return Err(BrokerError::PreconditionFailed(format!(
                    "invalid arg '{RETRY_INITIAL_DELAY}' for queue '{queue}' in vhost '{vhost}': \
                     required by the other x-retry-* arguments"
                )));
            }
            None => None,
        };
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
            retry,
            dedup: DedupPolicy::from_arguments(
                arguments,
                &format!("queue '{queue}' in vhost '{vhost}'"),
            )?,
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
    fn retry_delays_grow_by_the_multiplier_up_to_the_maximum_within_the_jitter() {
        let args = table(&[
            (RETRY_INITIAL_DELAY, FieldValue::I32(100)),
            (RETRY_MULTIPLIER, FieldValue::F64(3.0)),
            (RETRY_MAX_DELAY, FieldValue::I32(1000)),
            (RETRY_JITTER, FieldValue::F64(0.0)),
        ]);
        let retry = QueuePolicy::from_arguments(&args, "q", "/").unwrap().retry.unwrap();
        let delays: Vec<u64> = (1..=4).map(|n| retry.delay(n, 12345)).collect();
        assert_eq!(delays, [100, 300, 900, 1000]);
        let jittered = RetryPolicy { jitter: 0.5, ..retry };
        let spread: Vec<u64> = (0..1000u64)
            .map(|r| jittered.delay(1, r.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            .collect();
        assert!(spread.iter().all(|d| (50..=150).contains(d)), "{spread:?}");
        assert!(spread.iter().min() < Some(&70) && spread.iter().max() > Some(&130));
        let defaults = table(&[(RETRY_INITIAL_DELAY, FieldValue::I32(10))]);
        let retry = QueuePolicy::from_arguments(&defaults, "q", "/").unwrap().retry.unwrap();
        assert_eq!((retry.multiplier, retry.jitter), (2.0, 0.1));
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
            (RETRY_INITIAL_DELAY, FieldValue::I32(-1)),
            (RETRY_JITTER, FieldValue::F64(1.5)),
        ] {
            let error = QueuePolicy::from_arguments(&table(&[(key, value)]), "q", "/").unwrap_err();
            let BrokerError::PreconditionFailed(text) = error else { panic!("{error:?}") };
            assert!(text.contains(key), "{text}");
        }
        let only_key = table(&[(DEAD_LETTER_ROUTING_KEY, FieldValue::string("k"))]);
        assert!(QueuePolicy::from_arguments(&only_key, "q", "/").is_err());
    }
}
