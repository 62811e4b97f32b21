//! The Dead Letter Channel: messages a queue gives up on (rejected without requeue, over
//! the delivery limit, dropped for length) are republished to the queue's dead-letter
//! exchange with RabbitMQ's `x-death` history, or dropped if it has none.
//!
//! Durability: the dead-lettered copy is appended to the journal (for the durable queues it
//! reaches) before the original's reference is released, in the same journal order, so a
//! crash in between leaves the message in one place or both — never in neither.

use postroom_amqp::{FieldTable, FieldValue, ShortStr};
use postroom_store::Seq;

use crate::broker::Broker;
use crate::delivery::Origin;
use crate::message::{Message, QueuedMessage};
use crate::policy::DeadLetterReason;

const X_DEATH: &str = "x-death";

impl Broker {
    /// Dead-letters `messages`, taken from `queue` (ready or settled, no longer in it), for
    /// `reason`, then releases their store references.
    pub(crate) fn dead_letter(
        &mut self,
        vhost: &str,
        queue: &ShortStr,
        messages: Vec<QueuedMessage>,
        reason: DeadLetterReason,
    ) {
        let Some(q) = self.vhosts.get(vhost).and_then(|v| v.queues.get(queue)) else { return };
        let store_id = q.store_id;
        let exchange = q.policy.dead_letter_exchange.clone();
        let routing_key = q.policy.dead_letter_routing_key.clone();
        let stored: Vec<Seq> = messages.iter().filter_map(|m| m.stored).collect();
        if let Some(exchange) = exchange {
            let now_ms = self.clock.now_ms();
            for entry in messages {
                let original = &entry.message;
                let mut copy = dead_lettered(
                    original,
                    queue,
                    reason,
                    &exchange,
                    routing_key.as_ref(),
                    now_ms / 1000,
                );
                // Its TTL in the dead-letter queue counts from now.
                copy.stamp_arrival(now_ms);
                let Some(v) = self.vhosts.get(vhost) else { return };
                let mut targets = Vec::new();
                let headers = copy.properties().headers;
                if v.route(&exchange, &copy.routing_key, headers.as_ref(), &mut targets).is_err() {
                    // A missing dead-letter exchange drops the message, as in RabbitMQ.
                    continue;
                }
                targets.retain(|target| !is_cycle(original, target, reason));
                if !targets.is_empty() {
                    // A failed store append leaves the original in the journal: it comes
                    // back after a restart rather than being lost.
                    if self.enqueue(vhost, copy, &targets, Origin::DeadLetter).is_err() {
                        return;
                    }
                }
            }
        }
        if let Some(id) = store_id {
            let _ = self.store.ack(id, &stored);
        }
    }
}

/// Matches RabbitMQ: a message that would come back to a queue it already died in, with no
/// rejection anywhere on the way, is in an automatic cycle and is dropped.
fn is_cycle(message: &Message, target: &str, reason: DeadLetterReason) -> bool {
    if reason == DeadLetterReason::Rejected {
        return false;
    }
    let properties = message.properties();
    let Some(deaths) = properties.headers.as_ref().and_then(|h| h.get(X_DEATH)?.as_array()) else {
        return false;
    };
    let tables = || deaths.iter().filter_map(FieldValue::as_table);
    let rejected =
        tables().any(|t| t.get("reason").and_then(FieldValue::as_str) == Some("rejected"));
    !rejected && tables().any(|t| t.get("queue").and_then(FieldValue::as_str) == Some(target))
}

/// The copy of `message` that goes to the dead-letter exchange: routed with `routing_key`
/// (or its own), its `x-death` history updated as RabbitMQ does — the entry for this queue
/// and reason counted up and moved first, or a new one first — and `x-first-death-*`
/// (kept once set) and `x-last-death-*` headers. A per-message `expiration` is removed (kept
/// as `original-expiration`), so the copy does not expire again for the same reason.
pub(crate) fn dead_lettered(
    message: &Message,
    queue: &str,
    reason: DeadLetterReason,
    exchange: &str,
    routing_key: Option<&ShortStr>,
    now: u64,
) -> Message {
    let mut properties = message.properties();
    let mut headers = properties.headers.take().unwrap_or_default();
    let mut deaths: Vec<FieldValue> = match headers.remove(X_DEATH) {
        Some(FieldValue::Array(deaths)) => deaths,
        _ => Vec::new(),
    };
    let same = |t: &FieldTable| {
        t.get("queue").and_then(FieldValue::as_str) == Some(queue)
            && t.get("reason").and_then(FieldValue::as_str) == Some(reason.as_str())
    };
    let existing = deaths.iter().position(|d| d.as_table().is_some_and(same));
    let entry = match existing.map(|i| deaths.remove(i)) {
        Some(FieldValue::Table(mut table)) => {
            let count = table.get("count").and_then(FieldValue::as_int).unwrap_or(0);
            table.insert("count", FieldValue::I64(count + 1));
            table.insert("time", FieldValue::Timestamp(now));
            table
        }
        _ => {
            let mut table = FieldTable::new();
            table.insert("count", FieldValue::I64(1));
            table.insert("reason", FieldValue::string(reason.as_str()));
            table.insert("queue", FieldValue::string(queue));
            table.insert("time", FieldValue::Timestamp(now));
            table.insert("exchange", FieldValue::string(&message.exchange));
            let keys = vec![FieldValue::string(&message.routing_key)];
            table.insert("routing-keys", FieldValue::Array(keys));
            if let Some(expiration) = &properties.expiration {
                table.insert("original-expiration", FieldValue::string(expiration));
            }
            table
        }
    };
    properties.expiration = None;
    deaths.insert(0, FieldValue::Table(entry));
    headers.insert(X_DEATH, FieldValue::Array(deaths));
    for (name, value) in
        [("reason", reason.as_str()), ("queue", queue), ("exchange", message.exchange.as_ref())]
    {
        let first = format!("x-first-death-{name}");
        if headers.get(&first).is_none() {
            headers.insert(first.as_str(), FieldValue::string(value));
        }
        headers.insert(format!("x-last-death-{name}").as_str(), FieldValue::string(value));
    }
    properties.headers = Some(headers);
    let routing_key = routing_key.cloned().unwrap_or_else(|| message.routing_key.clone());
    // Delivered as published to the dead-letter exchange, as RabbitMQ reports it.
    Message::new(exchange.into(), routing_key, properties, message.body.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use postroom_amqp::BasicProperties;

    fn deaths(message: &Message) -> Vec<FieldTable> {
        let properties = message.properties();
        let headers = properties.headers.expect("headers");
        let deaths = headers.get(X_DEATH).and_then(FieldValue::as_array).expect("x-death");
        deaths.iter().map(|d| d.as_table().expect("table").clone()).collect()
    }

    fn text<'a>(table: &'a FieldTable, key: &str) -> &'a str {
        table.get(key).and_then(FieldValue::as_str).unwrap_or_default()
    }

    #[test]
    fn dead_lettering_twice_from_one_queue_counts_one_entry_up() {
        let properties = BasicProperties { expiration: Some("60000".into()), ..Default::default() };
        let original =
            Message::new("ex".into(), "key".into(), properties, Bytes::from_static(b"body"));
        let once = dead_lettered(&original, "work", DeadLetterReason::Rejected, "dlx", None, 7);
        assert_eq!((once.exchange.as_ref(), once.routing_key.as_ref()), ("dlx", "key"));
        assert_eq!(once.properties().expiration, None);
        let first = &deaths(&once)[0];
        assert_eq!(first.get("count").and_then(FieldValue::as_int), Some(1));
        assert_eq!(text(first, "reason"), "rejected");
        assert_eq!(text(first, "queue"), "work");
        assert_eq!(text(first, "exchange"), "ex");
        assert_eq!(text(first, "original-expiration"), "60000");
        let other = dead_lettered(&once, "retry", DeadLetterReason::Expired, "back", None, 8);
        let twice = dead_lettered(&other, "work", DeadLetterReason::Rejected, "dlx", None, 9);
        let entries = deaths(&twice);
        assert_eq!(entries.len(), 2);
        assert_eq!(text(&entries[0], "queue"), "work");
        assert_eq!(entries[0].get("count").and_then(FieldValue::as_int), Some(2));
        assert_eq!(text(&entries[1], "queue"), "retry");
        let headers = twice.properties().headers.unwrap();
        assert_eq!(headers.get("x-first-death-queue").and_then(FieldValue::as_str), Some("work"));
        assert_eq!(
            headers.get("x-last-death-reason").and_then(FieldValue::as_str),
            Some("rejected")
        );
    }

    #[test]
    fn an_automatic_cycle_is_detected_but_a_rejection_breaks_it() {
        let original =
            Message::new("".into(), "q".into(), BasicProperties::default(), Bytes::new());
        let expired = dead_lettered(&original, "q", DeadLetterReason::Expired, "dlx", None, 1);
        assert!(is_cycle(&expired, "q", DeadLetterReason::Expired));
        assert!(!is_cycle(&expired, "other", DeadLetterReason::Expired));
        assert!(!is_cycle(&expired, "q", DeadLetterReason::Rejected));
        let rejected = dead_lettered(&expired, "p", DeadLetterReason::Rejected, "dlx", None, 2);
        assert!(!is_cycle(&rejected, "q", DeadLetterReason::Expired));
    }
}
