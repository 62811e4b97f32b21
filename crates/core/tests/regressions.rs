//! Regression tests for defects found in review of the broker domain, driven through the
//! `Broker` API with a `MemoryStore` and an outlet that records what would be sent.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use postroom_amqp::{BasicProperties, FieldTable, FieldValue, ShortStr};
use postroom_core::clock::ManualClock;
use postroom_core::{
    Broker, ChannelKey, Destination, ExchangeSpec, Message, Outbound, Outlet, QueueSpec, Settlement,
};
use postroom_store::{MemoryStore, Store};

#[derive(Default)]
struct Recorder(Mutex<Vec<Outbound>>);

impl Outlet for Recorder {
    fn send(&self, event: Outbound) {
        self.0.lock().unwrap().push(event);
    }
}

impl Recorder {
    fn delivery_tags(&self) -> Vec<u64> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Outbound::Deliver { delivery_tag, .. } => Some(*delivery_tag),
                _ => None,
            })
            .collect()
    }

    fn delivered_bodies(&self) -> Vec<Bytes> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Outbound::Deliver { message, .. } => Some(message.body.clone()),
                _ => None,
            })
            .collect()
    }
}

struct Fixture {
    broker: Broker,
    store: Arc<MemoryStore>,
    outlet: Arc<Recorder>,
    key: ChannelKey,
}

impl Fixture {
    fn new() -> Fixture {
        let store = Arc::new(MemoryStore::new());
        let mut broker = Broker::new(7, store.clone());
        let outlet = Arc::new(Recorder::default());
        let connection = broker.open_connection("/", "guest", outlet.clone()).unwrap();
        let key = ChannelKey { connection, channel: 1 };
        broker.open_channel(key).unwrap();
        Fixture { broker, store, outlet, key }
    }

    fn declare_with(&mut self, name: &str, arguments: &[(&str, FieldValue)]) {
        let arguments: FieldTable =
            arguments.iter().map(|(k, v)| (ShortStr::from(*k), v.clone())).collect();
        let spec = QueueSpec { name: name.into(), durable: true, arguments, ..Default::default() };
        self.broker.queue_declare(self.key.connection, spec).unwrap();
    }

    fn get(&mut self, queue: &str) -> Option<postroom_core::Got> {
        self.broker.basic_get(self.key, queue, false).unwrap()
    }

    fn declare(&mut self, name: &str, durable: bool, auto_delete: bool) {
        let spec = QueueSpec { name: name.into(), durable, auto_delete, ..Default::default() };
        self.broker.queue_declare(self.key.connection, spec).unwrap();
    }

    fn publish(&mut self, queue: &str, body: &'static str) {
        let properties = BasicProperties { delivery_mode: Some(2), ..Default::default() };
        let body = Bytes::from_static(body.as_bytes());
        let message = Message::new("".into(), queue.into(), properties.clone(), body);
        self.broker.publish(self.key, message, &properties).unwrap();
    }

    fn consume(&mut self, queue: &str, tag: &str) {
        let arguments = postroom_amqp::FieldTable::new();
        self.broker
            .basic_consume(self.key, queue, tag.into(), (false, false), &arguments, |_| {})
            .unwrap();
    }
}

#[test]
fn deleting_the_end_of_a_long_auto_delete_exchange_chain_does_not_exhaust_the_stack() {
    let mut f = Fixture::new();
    let depth = 5_000;
    for i in 0..=depth {
        let spec = ExchangeSpec {
            name: format!("x{i}").into(),
            kind: "fanout".into(),
            auto_delete: true,
            ..Default::default()
        };
        f.broker.exchange_declare(f.key.connection, spec).unwrap();
    }
    for i in 0..depth {
        let destination = Destination::Exchange(format!("x{}", i + 1).into());
        f.broker
            .bind(f.key.connection, &format!("x{i}"), destination, "".into(), FieldTable::new())
            .unwrap();
    }
    // Run on a small stack: the old recursive cascade needed one frame per link.
    let handle = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            f.broker.exchange_delete(f.key.connection, &format!("x{depth}"), false).unwrap();
            f.broker.vhost("/").unwrap().exchanges.keys().filter(|k| k.starts_with('x')).count()
        })
        .unwrap();
    assert_eq!(handle.join().expect("no stack overflow"), 0, "the whole chain is auto-deleted");
}

#[test]
fn a_reused_consumer_tag_is_not_credited_for_its_predecessors_deliveries() {
    let mut f = Fixture::new();
    f.declare("q", false, false);
    f.broker.basic_qos(f.key, 1, false).unwrap();
    for body in ["m1", "m2", "m3"] {
        f.publish("q", body);
    }
    f.consume("q", "c");
    assert_eq!(f.outlet.delivery_tags(), vec![1]);
    f.broker.basic_cancel(f.key, "c").unwrap();
    f.consume("q", "c");
    assert_eq!(f.outlet.delivery_tags(), vec![1, 2], "the new consumer gets m2");
    f.broker.settle(f.key, 1, false, Settlement::Ack).unwrap();
    assert_eq!(f.outlet.delivery_tags(), vec![1, 2], "prefetch 1: m3 waits for m2's ack");
    f.broker.settle(f.key, 2, false, Settlement::Ack).unwrap();
    assert_eq!(f.outlet.delivery_tags(), vec![1, 2, 3]);
}

#[test]
fn unacked_messages_of_a_deleted_queue_do_not_land_in_a_new_queue_of_the_same_name() {
    let mut f = Fixture::new();
    f.declare("jobs", true, false);
    f.publish("jobs", "old");
    let got = f.broker.basic_get(f.key, "jobs", false).unwrap().expect("a message");
    f.broker.queue_delete(f.key.connection, "jobs", false, false).unwrap();
    f.declare("jobs", true, false);
    f.broker.settle(f.key, got.delivery_tag, false, Settlement::Requeue).unwrap();
    assert!(f.broker.basic_get(f.key, "jobs", true).unwrap().is_none(), "the new queue is empty");
    assert!(f.store.snapshot().queues.is_empty(), "nothing is left referenced in the store");
}

#[test]
fn closing_the_channel_of_the_last_consumer_of_a_durable_auto_delete_queue_releases_its_messages() {
    let mut f = Fixture::new();
    f.declare("temp", true, true);
    f.publish("temp", "a");
    f.publish("temp", "b");
    f.consume("temp", "c");
    assert_eq!(f.outlet.delivered_bodies().len(), 2, "both delivered, unacked");
    f.broker.close_channel(f.key);
    assert!(!f.broker.vhost("/").unwrap().queues.contains_key("temp"), "auto-deleted");
    assert!(f.store.snapshot().queues.is_empty(), "its unacked messages were released");
}

#[test]
fn global_prefetch_credit_goes_round_the_channels_queues() {
    let mut f = Fixture::new();
    f.declare("a", false, false);
    f.declare("b", false, false);
    for _ in 0..20 {
        f.publish("a", "from-a");
        f.publish("b", "from-b");
    }
    f.broker.basic_qos(f.key, 1, true).unwrap();
    f.consume("a", "ca");
    f.consume("b", "cb");
    for _ in 0..10 {
        let tag = *f.outlet.delivery_tags().last().unwrap();
        f.broker.settle(f.key, tag, false, Settlement::Ack).unwrap();
    }
    let bodies = f.outlet.delivered_bodies();
    let from_b = bodies.iter().filter(|b| b.as_ref() == b"from-b").count();
    assert!(from_b >= 3, "queue b got {from_b} of {} deliveries", bodies.len());
}

#[test]
fn store_references_follow_acks_of_persistent_messages() {
    let mut f = Fixture::new();
    f.declare("d", true, false);
    f.publish("d", "x");
    assert_eq!(f.store.snapshot().queues.values().map(|refs| refs.len()).sum::<u64>(), 1);
    let got = f.broker.basic_get(f.key, "d", false).unwrap().unwrap();
    f.broker.settle(f.key, got.delivery_tag, false, Settlement::Ack).unwrap();
    assert!(f.store.snapshot().queues.is_empty());
}

/// Issue 3: delivery counts are journal records, so a restart keeps them.
#[test]
fn a_requeued_message_keeps_its_delivery_count_across_a_restart() {
    let mut f = Fixture::new();
    f.declare("d", true, false);
    f.publish("d", "twice-returned");
    f.publish("d", "never-delivered");
    for expected in 0..2 {
        let got = f.broker.basic_get(f.key, "d", false).unwrap().unwrap();
        assert_eq!(got.delivery_count, expected);
        f.broker.settle(f.key, got.delivery_tag, false, Settlement::Requeue).unwrap();
    }
    f.store.close().unwrap();
    f.store.reopen();
    let mut broker = Broker::new(8, f.store.clone());
    broker.restore(f.store.take_recovered()).unwrap();
    let connection = broker.open_connection("/", "guest", f.outlet.clone()).unwrap();
    let key = ChannelKey { connection, channel: 1 };
    broker.open_channel(key).unwrap();
    let first = broker.basic_get(key, "d", false).unwrap().unwrap();
    assert_eq!(first.message.body.as_ref(), b"twice-returned");
    assert_eq!((first.delivery_count, first.redelivered), (2, true));
    let second = broker.basic_get(key, "d", false).unwrap().unwrap();
    assert_eq!(second.message.body.as_ref(), b"never-delivered");
    assert_eq!((second.delivery_count, second.redelivered), (0, false));
}

fn delivery_count_header(got: &postroom_core::Got) -> Option<i64> {
    got.message.properties().headers?.get("x-delivery-count")?.as_int()
}

/// Issue 4: a nack with requeue on a retry queue waits out the backoff, without holding
/// up the messages behind it, and carries its delivery count when it comes back.
#[test]
fn nack_with_requeue_schedules_the_retry_after_the_backoff() {
    let mut f = Fixture::new();
    let clock = Arc::new(ManualClock::new(1_000_000));
    f.broker.set_clock(clock.clone());
    f.declare_with(
        "jobs",
        &[
            ("x-retry-initial-delay", FieldValue::I32(1000)),
            ("x-retry-multiplier", FieldValue::F64(2.0)),
            ("x-retry-jitter", FieldValue::F64(0.0)),
        ],
    );
    f.publish("jobs", "flaky");
    f.publish("jobs", "fine");
    let flaky = f.get("jobs").unwrap();
    f.broker.settle(f.key, flaky.delivery_tag, false, Settlement::Requeue).unwrap();
    // The next message is not held up by the one waiting.
    let fine = f.get("jobs").unwrap();
    assert_eq!(fine.message.body.as_ref(), b"fine");
    f.broker.settle(f.key, fine.delivery_tag, false, Settlement::Ack).unwrap();
    clock.advance(999);
    f.broker.tick();
    assert!(f.get("jobs").is_none(), "ready before its delay");
    clock.advance(1);
    f.broker.tick();
    let again = f.get("jobs").unwrap();
    assert_eq!(again.message.body.as_ref(), b"flaky");
    assert_eq!((again.delivery_count, again.redelivered), (1, true));
    assert_eq!(delivery_count_header(&again), Some(1));
    // The second retry waits twice as long.
    f.broker.settle(f.key, again.delivery_tag, false, Settlement::Requeue).unwrap();
    clock.advance(1999);
    f.broker.tick();
    assert!(f.get("jobs").is_none());
    clock.advance(1);
    f.broker.tick();
    assert_eq!(f.get("jobs").unwrap().delivery_count, 2);
}

/// Issue 4: retries end in the dead-letter exchange once past the delivery limit.
#[test]
fn retries_past_the_delivery_limit_end_in_the_dead_letter_queue() {
    let mut f = Fixture::new();
    let clock = Arc::new(ManualClock::new(5_000));
    f.broker.set_clock(clock.clone());
    f.declare("dead", true, false);
    f.declare_with(
        "jobs",
        &[
            ("x-retry-initial-delay", FieldValue::I32(10)),
            ("x-delivery-limit", FieldValue::I32(2)),
            ("x-dead-letter-exchange", FieldValue::string("")),
            ("x-dead-letter-routing-key", FieldValue::string("dead")),
        ],
    );
    f.publish("jobs", "poison");
    for attempt in 0..3 {
        clock.advance(100);
        f.broker.tick();
        let got = f.get("jobs").expect("delivered again");
        assert_eq!(got.delivery_count, attempt);
        f.broker.settle(f.key, got.delivery_tag, false, Settlement::Requeue).unwrap();
    }
    clock.advance(100);
    f.broker.tick();
    assert!(f.get("jobs").is_none());
    let dead = f.get("dead").expect("dead-lettered");
    let headers = dead.message.properties().headers.unwrap();
    let death = headers.get("x-death").and_then(FieldValue::as_array).unwrap()[0].clone();
    let reason = death.as_table().and_then(|t| t.get("reason")).and_then(FieldValue::as_str);
    assert_eq!(reason, Some("delivery_limit"));
}

/// Issue 4: a message waiting for its retry when the broker stops waits on after a restart.
#[test]
fn a_scheduled_retry_survives_a_restart() {
    let mut f = Fixture::new();
    let clock = Arc::new(ManualClock::new(1_000_000));
    f.broker.set_clock(clock.clone());
    f.declare_with(
        "jobs",
        &[("x-retry-initial-delay", FieldValue::I32(5000)), ("x-retry-jitter", FieldValue::I32(0))],
    );
    f.publish("jobs", "later");
    let got = f.get("jobs").unwrap();
    f.broker.settle(f.key, got.delivery_tag, false, Settlement::Requeue).unwrap();
    f.store.close().unwrap();
    f.store.reopen();
    let mut broker = Broker::new(8, f.store.clone());
    broker.set_clock(clock.clone());
    broker.restore(f.store.take_recovered()).unwrap();
    let connection = broker.open_connection("/", "guest", f.outlet.clone()).unwrap();
    let key = ChannelKey { connection, channel: 1 };
    broker.open_channel(key).unwrap();
    clock.advance(4000);
    broker.tick();
    assert!(broker.basic_get(key, "jobs", false).unwrap().is_none(), "released early");
    clock.advance(1000);
    broker.tick();
    let got = broker.basic_get(key, "jobs", false).unwrap().expect("released on time");
    assert_eq!((got.message.body.as_ref(), got.delivery_count), (b"later".as_ref(), 1));
}

fn arguments(entries: &[(&str, FieldValue)]) -> FieldTable {
    entries.iter().map(|(k, v)| (ShortStr::from(*k), v.clone())).collect()
}

fn references(store: &MemoryStore) -> u64 {
    store.snapshot().queues.values().map(|refs| refs.len()).sum()
}

impl Fixture {
    fn declare_delayed(&mut self, name: &str, auto_delete: bool) {
        let spec = ExchangeSpec {
            name: name.into(),
            kind: "x-delayed-message".into(),
            durable: true,
            auto_delete,
            arguments: arguments(&[("x-delayed-type", FieldValue::string("direct"))]),
            ..Default::default()
        };
        self.broker.exchange_declare(self.key.connection, spec).unwrap();
        self.declare("held", true, false);
        let destination = Destination::Queue("held".into());
        let bind =
            self.broker.bind(self.key.connection, name, destination, "k".into(), FieldTable::new());
        bind.unwrap();
    }

    fn publish_delayed(&mut self, exchange: &str, delay: i32) {
        let properties = BasicProperties {
            delivery_mode: Some(2),
            headers: Some(arguments(&[("x-delay", FieldValue::I32(delay))])),
            ..Default::default()
        };
        let message = Message::new(exchange.into(), "k".into(), properties.clone(), "later".into());
        self.broker.publish(self.key, message, &properties).unwrap();
    }
}

/// Issue 4: a delayed message is routed on the first tick at or after its due time.
#[test]
fn a_delayed_message_is_routed_once_its_delay_is_over() {
    let mut f = Fixture::new();
    let clock = Arc::new(ManualClock::new(1_000_000));
    f.broker.set_clock(clock.clone());
    f.declare_delayed("dx", false);
    f.publish_delayed("dx", 5_000);
    clock.advance(4_999);
    f.broker.tick();
    assert!(f.get("held").is_none(), "routed before its delay");
    clock.advance(1);
    f.broker.tick();
    let got = f.get("held").expect("routed once due");
    let headers = got.message.properties().headers.unwrap();
    assert_eq!(headers.get("x-delay").and_then(FieldValue::as_int), Some(-5_000));
}

/// Issue 4: whatever removes a delayed exchange or a deduplicating queue (delete, or
/// auto-delete with its last binding), what they held in the store is released.
#[test]
fn removed_delayed_exchanges_and_dedup_queues_release_their_store_references() {
    let mut f = Fixture::new();
    f.declare_delayed("deleted", false);
    f.publish_delayed("deleted", 60_000);
    assert_eq!(references(&f.store), 1);
    f.broker.exchange_delete(f.key.connection, "deleted", false).unwrap();
    f.broker.tick();
    assert_eq!(references(&f.store), 0, "deleted exchange");

    f.declare_delayed("auto", true);
    f.publish_delayed("auto", 60_000);
    let destination = Destination::Queue("held".into());
    f.broker.unbind(f.key.connection, "auto", destination, "k", &FieldTable::new()).unwrap();
    assert!(!f.broker.vhost("/").unwrap().exchanges.contains_key("auto"), "auto-deleted");
    f.broker.tick();
    assert_eq!(references(&f.store), 0, "auto-deleted exchange");

    f.declare_with("dedup", &[("x-message-deduplication", FieldValue::Bool(true))]);
    let properties = BasicProperties { message_id: Some("m".into()), ..Default::default() };
    let message = Message::new("".into(), "dedup".into(), properties.clone(), "x".into());
    f.broker.publish(f.key, message, &properties).unwrap();
    assert_eq!(references(&f.store), 1, "the transient message is not stored; its key is");
    f.broker.queue_delete(f.key.connection, "dedup", false, false).unwrap();
    assert_eq!(references(&f.store), 0, "deleted dedup queue");
}

fn with_message_id(id: &str) -> BasicProperties {
    BasicProperties { message_id: Some(id.into()), delivery_mode: Some(2), ..Default::default() }
}

impl Fixture {
    fn publish_with(
        &mut self,
        queue: &str,
        properties: BasicProperties,
    ) -> postroom_core::Published {
        let message = Message::new("".into(), queue.into(), properties.clone(), "x".into());
        self.broker.publish(self.key, message, &properties).unwrap()
    }
}

/// Issue 4 (review): a duplicate's confirm must not go out before its original is safe.
#[test]
fn a_duplicate_is_confirmed_no_earlier_than_its_original() {
    let mut f = Fixture::new();
    f.declare_with("q", &[("x-message-deduplication", FieldValue::Bool(true))]);
    let first = f.publish_with("q", with_message_id("m"));
    let second = f.publish_with("q", with_message_id("m"));
    assert!(first.durable_at.is_some());
    assert!(second.durable_at >= first.durable_at, "{second:?} vs {first:?}");
    assert_eq!(f.broker.vhost("/").unwrap().queues["q"].message_count(), 1);
}

/// Issue 4 (review): a message dead-lettered back into its deduplicating queue (the usual
/// TTL retry loop) is the same message, not a duplicate.
#[test]
fn a_dead_letter_cycle_back_into_a_dedup_queue_keeps_the_message() {
    let mut f = Fixture::new();
    let clock = Arc::new(ManualClock::new(1_000_000));
    f.broker.set_clock(clock.clone());
    f.declare_with(
        "work",
        &[
            ("x-message-deduplication", FieldValue::Bool(true)),
            ("x-dead-letter-exchange", FieldValue::string("")),
            ("x-dead-letter-routing-key", FieldValue::string("retry")),
        ],
    );
    f.declare_with(
        "retry",
        &[
            ("x-message-ttl", FieldValue::I32(1000)),
            ("x-dead-letter-exchange", FieldValue::string("")),
            ("x-dead-letter-routing-key", FieldValue::string("work")),
        ],
    );
    f.publish_with("work", with_message_id("job-1"));
    let got = f.get("work").unwrap();
    f.broker.settle(f.key, got.delivery_tag, false, Settlement::Discard).unwrap();
    clock.advance(1001);
    f.broker.tick();
    f.broker.tick();
    let queues = &f.broker.vhost("/").unwrap().queues;
    assert_eq!(queues["retry"].message_count(), 0);
    assert_eq!(queues["work"].message_count(), 1, "back in work, not dropped as a duplicate");
    // A client publishing it again is still a duplicate.
    f.publish_with("work", with_message_id("job-1"));
    assert_eq!(f.broker.vhost("/").unwrap().queues["work"].message_count(), 1);
}
