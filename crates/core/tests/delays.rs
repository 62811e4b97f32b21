//! Release rounds of delayed exchanges split around the broker lock, driven through the
//! public API as the server drives them: [`Broker::take_due_delayed`], then
//! [`postroom_core::read_due`] with only the store, then [`Broker::release_read`], with
//! anything a connection may do (delete, redeclare, publish) in between. Every test ends
//! by checking that each message reached its queue exactly once or is still held, and
//! that the store holds no reference the broker forgot.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use postroom_amqp::{BasicProperties, FieldTable, FieldValue, ShortStr};
use postroom_core::clock::ManualClock;
use postroom_core::{
    Broker, ChannelKey, Destination, ExchangeSpec, Message, Outbound, Outlet, QueueSpec,
    Settlement, read_due,
};
use postroom_store::{
    DeliveryState, MemoryStore, Progress, QueueId, Recovered, Seq, Store, StoreError,
};
use tokio::sync::watch;

struct Discard;

impl Outlet for Discard {
    fn send(&self, _: Outbound) {}
}

/// A [`MemoryStore`] whose reads and appends can be made to fail: reads return nothing
/// (as a message not written yet does) or an error, in a seeded pattern; appends fail
/// while `fail_appends` is set.
struct Flaky {
    inner: Arc<MemoryStore>,
    /// One read in this many returns nothing, one in this many (offset) fails (0: never).
    fail_one_in: AtomicU64,
    reads: AtomicU64,
    fail_appends: AtomicBool,
}

impl Flaky {
    fn new(inner: Arc<MemoryStore>) -> Flaky {
        Flaky {
            inner,
            fail_one_in: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            fail_appends: AtomicBool::new(false),
        }
    }
}

impl Store for Flaky {
    fn take_recovered(&self) -> Recovered {
        self.inner.take_recovered()
    }
    fn append(&self, queues: &[QueueId], payload: &[u8]) -> Result<(Seq, u64), StoreError> {
        if self.fail_appends.load(Ordering::Relaxed) {
            return Err(StoreError::Failed("injected".into()));
        }
        self.inner.append(queues, payload)
    }
    fn spill(&self, queues: &[QueueId], payload: &[u8]) -> Result<Seq, StoreError> {
        self.inner.spill(queues, payload)
    }
    fn release_from(&self, queue: QueueId, from: Seq) -> Result<u64, StoreError> {
        self.inner.release_from(queue, from)
    }
    fn ack(&self, queue: QueueId, seqs: &[Seq]) -> Result<(), StoreError> {
        self.inner.ack(queue, seqs)
    }
    fn read(
        &self,
        queue: QueueId,
        from: Seq,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Seq, Bytes)>, StoreError> {
        let n = self.reads.fetch_add(1, Ordering::Relaxed);
        let one_in = self.fail_one_in.load(Ordering::Relaxed);
        if one_in != 0 && n.is_multiple_of(one_in) {
            return Ok(Vec::new());
        }
        if one_in != 0 && n % one_in == 1 {
            return Err(StoreError::Failed("injected".into()));
        }
        self.inner.read(queue, from, max_messages, max_bytes)
    }
    fn delivered(&self, queue: QueueId, seq: Seq) {
        self.inner.delivered(queue, seq);
    }
    fn set_state(&self, queue: QueueId, seq: Seq, state: DeliveryState) {
        self.inner.set_state(queue, seq, state);
    }
    fn save_definitions(&self, data: &[u8]) -> Result<(), StoreError> {
        self.inner.save_definitions(data)
    }
    fn progress(&self) -> watch::Receiver<Progress> {
        self.inner.progress()
    }
    fn close(&self) -> Result<(), StoreError> {
        self.inner.close()
    }
}

struct Fixture {
    broker: Broker,
    memory: Arc<MemoryStore>,
    store: Arc<Flaky>,
    clock: Arc<ManualClock>,
    key: ChannelKey,
}

const START: u64 = 1_700_000_000_000;

impl Fixture {
    fn new() -> Fixture {
        let memory = Arc::new(MemoryStore::new());
        let store = Arc::new(Flaky::new(memory.clone()));
        let clock = Arc::new(ManualClock::new(START));
        let (broker, key) = Fixture::broker(store.clone(), clock.clone());
        let mut f = Fixture { broker, memory, store, clock, key };
        f.declare_delayed("dx");
        let spec = QueueSpec { name: "held".into(), durable: true, ..Default::default() };
        f.broker.queue_declare(f.key.connection, spec).unwrap();
        f.bind("dx");
        f
    }

    fn broker(store: Arc<Flaky>, clock: Arc<ManualClock>) -> (Broker, ChannelKey) {
        let mut broker = Broker::new(7, store.clone());
        broker.set_clock(clock);
        broker.restore(store.take_recovered()).unwrap();
        let connection = broker.open_connection("/", "guest", Arc::new(Discard)).unwrap();
        let key = ChannelKey { connection, channel: 1 };
        broker.open_channel(key).unwrap();
        (broker, key)
    }

    /// Closes the store and brings the broker back from it, as a restart does.
    fn restart(&mut self) {
        self.memory.close().unwrap();
        self.memory.reopen();
        let (broker, key) = Fixture::broker(self.store.clone(), self.clock.clone());
        self.broker = broker;
        self.key = key;
    }

    fn declare_delayed(&mut self, name: &str) {
        self.declare_delayed_with(name, true);
    }

    fn declare_delayed_with(&mut self, name: &str, durable: bool) {
        let spec = ExchangeSpec {
            name: name.into(),
            kind: "x-delayed-message".into(),
            durable,
            arguments: [(ShortStr::from("x-delayed-type"), FieldValue::string("direct"))]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        self.broker.exchange_declare(self.key.connection, spec).unwrap();
    }

    fn bind(&mut self, exchange: &str) {
        let destination = Destination::Queue("held".into());
        let table = FieldTable::new();
        self.broker.bind(self.key.connection, exchange, destination, "k".into(), table).unwrap();
    }

    fn publish(&mut self, exchange: &str, body: &str, delay: u64) {
        let headers: FieldTable =
            [(ShortStr::from("x-delay"), FieldValue::I64(delay as i64))].into_iter().collect();
        let properties = BasicProperties {
            delivery_mode: Some(2),
            headers: Some(headers),
            ..Default::default()
        };
        let message =
            Message::new(exchange.into(), "k".into(), properties.clone(), body.to_owned().into());
        self.broker.publish(self.key, message, &properties).unwrap();
    }

    /// Takes everything from queue `held`, acking it, as bodies in arrival order.
    fn drain(&mut self) -> Vec<String> {
        let mut bodies = Vec::new();
        while let Some(got) = self.broker.basic_get(self.key, "held", false).unwrap() {
            let headers = got.message.properties().headers.unwrap_or_default();
            let negated = headers.get("x-delay").and_then(FieldValue::as_int);
            assert!(negated.is_some_and(|d| d < 0), "released without x-delay negated");
            bodies.push(String::from_utf8(got.message.body.to_vec()).unwrap());
            self.broker.settle(self.key, got.delivery_tag, false, Settlement::Ack).unwrap();
        }
        bodies
    }

    /// How many messages exchange `name` holds (`None`: it is gone).
    fn held(&self, name: &str) -> Option<u64> {
        let exchange = self.broker.vhost("/")?.exchanges.get(name)?;
        exchange.delayed.as_ref().map(|held| held.held())
    }

    /// The store id of exchange `name`'s hold.
    fn store_id(&self, name: &str) -> QueueId {
        let exchange = &self.broker.vhost("/").unwrap().exchanges[name];
        exchange.delayed.as_ref().unwrap().store_id
    }

    /// References the store holds, all queues and holds together.
    fn references(&self) -> u64 {
        self.memory.snapshot().queues.values().map(|refs| refs.len()).sum()
    }

    /// One round as the server runs it, with `between` done after the take, before the
    /// read.
    fn round_with(&mut self, between: impl FnOnce(&mut Fixture)) {
        let round = self.broker.take_due_delayed();
        between(self);
        let read = read_due(&*self.store, round);
        self.broker.release_read(read);
    }
}

fn sorted(mut bodies: Vec<String>) -> Vec<String> {
    bodies.sort();
    bodies
}

#[test]
fn a_round_releases_the_due_messages_once_and_leaves_the_others_held() {
    let mut f = Fixture::new();
    f.publish("dx", "one", 1_000);
    f.publish("dx", "two", 2_000);
    f.publish("dx", "ten", 10_000);
    f.clock.advance(2_000);
    let round = f.broker.take_due_delayed();
    assert_eq!(round.due(), 2);
    assert_eq!(f.held("dx"), Some(1), "taken out of the hold");
    assert!(f.drain().is_empty(), "nothing is routed before the release");
    f.broker.release_read(read_due(&*f.store, round));
    assert_eq!(sorted(f.drain()), ["one", "two"]);
    assert!(f.broker.take_due_delayed().is_empty(), "nothing else is due");
    assert_eq!(f.references(), 1, "the released messages are acked under the hold");
    f.clock.advance(8_000);
    f.broker.tick();
    assert_eq!(f.drain(), ["ten"]);
    assert_eq!((f.held("dx"), f.references()), (Some(0), 0));
}

#[test]
fn a_burst_larger_than_a_round_is_released_over_full_rounds_then_one_that_is_not() {
    let mut f = Fixture::new();
    for n in 0..5000 {
        f.publish("dx", &format!("m{n}"), 1_000);
    }
    f.clock.advance(1_000);
    let mut rounds = Vec::new();
    loop {
        let round = f.broker.take_due_delayed();
        rounds.push((round.due(), round.is_full()));
        f.broker.release_read(read_due(&*f.store, round));
        if !rounds.last().unwrap().1 {
            break;
        }
        assert!(rounds.len() < 100, "rounds never stop being full");
    }
    assert!(rounds.len() > 1, "one round took the whole burst: {rounds:?}");
    assert_eq!(rounds.iter().map(|(due, _)| due).sum::<usize>(), 5000, "{rounds:?}");
    assert_eq!(f.drain().len(), 5000);
    assert_eq!((f.held("dx"), f.references()), (Some(0), 0));
}

#[test]
fn an_exchange_deleted_between_take_and_release_routes_nothing() {
    let mut f = Fixture::new();
    f.publish("dx", "gone", 1_000);
    f.clock.advance(1_000);
    f.round_with(|f| f.broker.exchange_delete(f.key.connection, "dx", false).unwrap());
    assert!(f.drain().is_empty(), "its held messages went with it");
    f.broker.tick();
    assert_eq!(f.references(), 0, "and its store references with the next tick");
}

#[test]
fn an_exchange_declared_again_between_take_and_release_does_not_get_the_old_round() {
    let mut f = Fixture::new();
    f.publish("dx", "old", 1_000);
    f.clock.advance(1_000);
    f.round_with(|f| {
        f.broker.exchange_delete(f.key.connection, "dx", false).unwrap();
        f.declare_delayed("dx");
        f.bind("dx");
        f.publish("dx", "new", 1_000);
    });
    assert!(f.drain().is_empty(), "the old message went with the old exchange");
    assert_eq!(f.held("dx"), Some(1));
    f.clock.advance(1_000);
    f.broker.tick();
    assert_eq!(f.drain(), ["new"]);
    f.broker.tick();
    assert_eq!(f.references(), 0);
}

#[test]
fn a_transient_exchange_declared_again_on_its_reused_store_id_does_not_get_the_old_round() {
    let mut f = Fixture::new();
    f.declare_delayed_with("tx", false);
    f.bind("tx");
    let old_id = f.store_id("tx");
    f.publish("tx", "old", 1_000);
    f.clock.advance(1_000);
    f.round_with(|f| {
        f.broker.exchange_delete(f.key.connection, "tx", false).unwrap();
        // Releases the deleted exchange's id for reuse.
        f.broker.tick_timers();
        f.declare_delayed_with("tx", false);
        f.bind("tx");
        f.publish("tx", "new", 1_000);
    });
    assert_eq!(f.store_id("tx"), old_id, "the store id was reused");
    assert!(f.drain().is_empty(), "the old message went with the old exchange");
    f.clock.advance(1_000);
    f.broker.tick();
    assert_eq!(f.drain(), ["new"]);
    assert_eq!((f.held("tx"), f.references()), (Some(0), 0), "nothing of the old one is held");
}

#[test]
fn a_due_message_the_read_did_not_return_stays_held_and_goes_next_round() {
    let mut f = Fixture::new();
    f.publish("dx", "late", 1_000);
    f.clock.advance(1_000);
    let round = f.broker.take_due_delayed();
    // A store that has not written it yet (or lost nothing but cannot read it now).
    let read = read_due(&MemoryStore::new(), round);
    f.broker.release_read(read);
    assert!(f.drain().is_empty());
    assert_eq!(f.held("dx"), Some(1), "held again");
    assert_eq!(f.references(), 1, "and still referenced");
    f.clock.advance(10);
    f.round_with(|_| {});
    assert_eq!(f.drain(), ["late"]);
    f.round_with(|_| {});
    assert!(f.drain().is_empty(), "released once");
    assert_eq!((f.held("dx"), f.references()), (Some(0), 0));
}

#[test]
fn a_release_that_could_not_be_written_is_not_acked_under_the_hold() {
    let mut f = Fixture::new();
    f.publish("dx", "kept", 1_000);
    f.clock.advance(1_000);
    f.round_with(|f| f.store.fail_appends.store(true, Ordering::Relaxed));
    assert!(f.drain().is_empty());
    assert_eq!(f.references(), 1, "the hold's reference stays for a restart to retry");
    f.store.fail_appends.store(false, Ordering::Relaxed);
    f.restart();
    f.clock.advance(10);
    f.broker.tick();
    assert_eq!(f.drain(), ["kept"]);
    assert_eq!(f.references(), 0);
}

#[test]
fn messages_read_back_after_a_restart_are_released_once_when_rounds_overlap() {
    let mut f = Fixture::new();
    for n in 0..5 {
        f.publish("dx", &format!("m{n}"), 1_000 + n);
    }
    f.publish("dx", "later", 60_000);
    f.restart();
    assert_eq!(f.held("dx"), Some(6), "held, due times unknown");
    f.clock.advance(5_000);
    // Two rounds taken before either is released (the server never does this) both read
    // back the same batch.
    let first = f.broker.take_due_delayed();
    let second = f.broker.take_due_delayed();
    let (first, second) = (read_due(&*f.store, first), read_due(&*f.store, second));
    f.broker.release_read(first);
    f.broker.release_read(second);
    assert_eq!(sorted(f.drain()), ["m0", "m1", "m2", "m3", "m4"], "due already: released");
    assert_eq!(f.held("dx"), Some(1));
    f.clock.advance(55_000);
    f.broker.tick();
    f.broker.tick();
    assert_eq!(f.drain(), ["later"]);
    assert_eq!((f.held("dx"), f.references()), (Some(0), 0));
}

/// Seeded: many messages with random delays, rounds whose reads sometimes return nothing
/// or fail, a restart halfway: every message reaches the queue exactly once, none early.
#[test]
fn with_flaky_reads_and_a_restart_every_message_is_released_exactly_once() {
    let seed: u64 = std::env::var("SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(11);
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut f = Fixture::new();
    f.store.fail_one_in.store(5, Ordering::Relaxed);
    let mut due_at = std::collections::HashMap::new();
    for n in 0..3000u64 {
        let delay = 1 + next() % 20_000;
        f.publish("dx", &format!("m{n}"), delay);
        due_at.insert(format!("m{n}"), START + delay);
    }
    let mut seen = std::collections::HashSet::new();
    for step in 0..400 {
        if step == 150 {
            f.restart();
        }
        f.clock.advance(100);
        f.round_with(|_| {});
        let now = START + 100 * (step + 1);
        for body in f.drain() {
            assert!(due_at[&body] <= now, "{body} released early (SEED={seed})");
            assert!(seen.insert(body.clone()), "{body} released twice (SEED={seed})");
        }
    }
    assert_eq!(seen.len(), 3000, "all released (SEED={seed})");
    assert_eq!((f.held("dx"), f.references()), (Some(0), 0), "SEED={seed}");
}

#[test]
fn broker_tick_still_releases_in_one_call() {
    let mut f = Fixture::new();
    f.publish("dx", "tick", 500);
    f.clock.advance(500);
    f.broker.tick();
    assert_eq!(f.drain(), ["tick"]);
}
