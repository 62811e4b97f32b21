//! Fault tests on the real binary: `kill -9` under publish load with confirms, repeatedly,
//! and injected store failures. Every confirmed message must survive (at least once), none
//! may be corrupt, and acks known to be durable must not be undone.
//!
//! The seed is printed at the start of each test (shown when it fails); set `CRASH_SEED` to
//! replay a run.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use postroom_testkit::ChildBroker;

const BIN: &str = env!("CARGO_BIN_EXE_postroom");

fn seed() -> u64 {
    let seed = std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64
    });
    eprintln!("crash test seed: {seed} (replay with CRASH_SEED={seed})");
    seed
}

/// xorshift64*: deterministic for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A body that names its id and carries a pattern, so damage is detectable.
fn body(id: u64) -> Vec<u8> {
    let mut body = format!("{id}:").into_bytes();
    body.extend((0..(id % 300) as u8).map(|i| i.wrapping_mul(31).wrapping_add(id as u8)));
    body
}

fn parse_body(data: &[u8]) -> u64 {
    let colon = data.iter().position(|b| *b == b':').expect("body has an id");
    let id: u64 = std::str::from_utf8(&data[..colon]).unwrap().parse().unwrap();
    assert_eq!(data, body(id).as_slice(), "message {id} is corrupt");
    id
}

async fn connect(url: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default()).await.expect("connect");
    let channel = conn.create_channel().await.expect("channel");
    (conn, channel)
}

#[derive(Default)]
struct Ledger {
    confirmed: BTreeSet<u64>,
    /// Acked, but no publish sent after the ack was confirmed yet.
    acked_pending: Vec<u64>,
    /// Acked before a publish that was confirmed: the journal wrote the ack first.
    acked_durable: HashSet<u64>,
}

/// Publishes batches with confirms and acks one message per batch on the same channel,
/// until the broker dies.
async fn load(channel: Channel, queue: String, ledger: Arc<Mutex<Ledger>>, first_id: u64) {
    let mut next = first_id;
    loop {
        let mut confirms = Vec::new();
        let batch_start = next;
        for _ in 0..100 {
            let props = BasicProperties::default().with_delivery_mode(2);
            let publish = channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body(next),
                    props,
                )
                .await;
            let Ok(confirm) = publish else { return };
            confirms.push((next, confirm));
            next += 1;
        }
        for (id, confirm) in confirms {
            match confirm.await {
                Ok(c) if c.is_ack() => {
                    let mut l = ledger.lock().unwrap();
                    l.confirmed.insert(id);
                    if id == batch_start {
                        // Every ack sent before this publish is now on disk.
                        let pending = std::mem::take(&mut l.acked_pending);
                        l.acked_durable.extend(pending);
                    }
                }
                _ => return,
            }
        }
        let got = channel.basic_get(queue.as_str().into(), BasicGetOptions::default()).await;
        let Ok(Some(message)) = got else { return };
        let id = parse_body(&message.delivery.data);
        if message.delivery.acker.ack(BasicAckOptions::default()).await.is_err() {
            return;
        }
        ledger.lock().unwrap().acked_pending.push(id);
    }
}

async fn drain(channel: &Channel, queue: &str) -> Vec<u64> {
    let mut ids = Vec::new();
    loop {
        let options = BasicGetOptions { no_ack: true };
        match channel.basic_get(queue.into(), options).await.expect("get") {
            Some(message) => ids.push(parse_body(&message.delivery.data)),
            None => return ids,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_repeated_kill_9_under_load() {
    let mut rng = Rng(seed() | 1);
    let dir = tempfile::tempdir().unwrap();
    // A small memory limit keeps most of each backlog in the journal only, so the crash
    // hits the spill and read-back paths too.
    let args = ["--log", "warn", "--queue-memory-limit", "16384"];
    let mut broker = ChildBroker::start(Path::new(BIN), dir.path(), &args);
    let mut next_id = 1;
    for round in 0..5 {
        let queue = format!("crash-{round}");
        let (conn, channel) = connect(&broker.url()).await;
        channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let options = QueueDeclareOptions { durable: true, ..Default::default() };
        channel.queue_declare(queue.as_str().into(), options, FieldTable::default()).await.unwrap();
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let task = tokio::spawn(load(channel, queue.clone(), ledger.clone(), next_id));
        tokio::time::sleep(Duration::from_millis(100 + rng.below(600))).await;
        broker.kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        drop(conn);
        broker.restart(&args);

        let (conn, channel) = connect(&broker.url()).await;
        let present = drain(&channel, &queue).await;
        let ledger = std::mem::take(&mut *ledger.lock().unwrap());
        let present_set: HashSet<u64> = present.iter().copied().collect();
        let missing: Vec<u64> = ledger
            .confirmed
            .iter()
            .filter(|id| !present_set.contains(id) && !ledger.acked_durable.contains(id))
            .filter(|id| !ledger.acked_pending.contains(id))
            .copied()
            .collect();
        assert!(missing.is_empty(), "round {round}: confirmed but lost: {missing:?}");
        let resurrected: Vec<u64> =
            present.iter().filter(|id| ledger.acked_durable.contains(id)).copied().collect();
        assert!(resurrected.is_empty(), "round {round}: acked but back: {resurrected:?}");
        assert!(
            present.windows(2).all(|w| w[0] < w[1]),
            "round {round}: recovered out of order or duplicated"
        );
        eprintln!(
            "round {round}: {} confirmed, {} acked durably, {} recovered",
            ledger.confirmed.len(),
            ledger.acked_durable.len(),
            present.len()
        );
        next_id = ledger.confirmed.last().copied().unwrap_or(next_id) + 1_000;
        channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
        conn.close(200, "bye".into()).await.unwrap();
    }
}

/// Publishes with confirms to `work` (consumed and acked as it goes) and every 40th message
/// to `keep` too (never consumed), until the broker dies. With small segments the kept
/// messages are the few stragglers of every segment, which compaction moves forward.
async fn straggler_load(channel: Channel, confirmed: Arc<Mutex<Vec<u64>>>, first_id: u64) {
    let mut next = first_id;
    loop {
        let mut confirms = Vec::new();
        for _ in 0..100 {
            let props = BasicProperties::default().with_delivery_mode(2);
            let queues: &[&str] =
                if next.is_multiple_of(40) { &["work", "keep"] } else { &["work"] };
            for queue in queues {
                let publish = channel
                    .basic_publish(
                        "".into(),
                        (*queue).into(),
                        BasicPublishOptions::default(),
                        &body(next),
                        props.clone(),
                    )
                    .await;
                let Ok(confirm) = publish else { return };
                confirms.push((next, *queue == "keep", confirm));
            }
            next += 1;
        }
        for (id, kept, confirm) in confirms {
            match confirm.await {
                Ok(c) if c.is_ack() => {
                    if kept {
                        confirmed.lock().unwrap().push(id);
                    }
                }
                _ => return,
            }
        }
    }
}

/// Acks everything delivered from `work`, until the broker dies.
async fn ack_all(channel: Channel) {
    use futures_lite::StreamExt;
    let _ = channel.basic_qos(500, BasicQosOptions::default()).await;
    let options = BasicConsumeOptions::default();
    let Ok(mut consumer) =
        channel.basic_consume("work".into(), "acker".into(), options, FieldTable::default()).await
    else {
        return;
    };
    while let Some(Ok(delivery)) = consumer.next().await {
        parse_body(&delivery.data);
        if delivery.acker.ack(BasicAckOptions::default()).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stragglers_moved_by_compaction_survive_repeated_kill_9() {
    let mut rng = Rng(seed() | 1);
    let dir = tempfile::tempdir().unwrap();
    // 256 KiB segments: a few hundred messages each, so compaction runs many times a second.
    let args = ["--log", "warn", "--segment-size", "262144"];
    let mut broker = ChildBroker::start(Path::new(BIN), dir.path(), &args);
    let confirmed = Arc::new(Mutex::new(Vec::new()));
    let mut next_id = 1;
    for round in 0..4 {
        let (conn, channel) = connect(&broker.url()).await;
        channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let options = QueueDeclareOptions { durable: true, ..Default::default() };
        for queue in ["work", "keep"] {
            channel.queue_declare(queue.into(), options, FieldTable::default()).await.unwrap();
        }
        let consumer = conn.create_channel().await.unwrap();
        let acker = tokio::spawn(ack_all(consumer));
        let load = tokio::spawn(straggler_load(channel, confirmed.clone(), next_id));
        tokio::time::sleep(Duration::from_millis(1000 + rng.below(1500))).await;
        broker.kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), load).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), acker).await;
        drop(conn);
        broker.restart(&args);
        next_id += 1_000_000;
        let segments = std::fs::read_dir(dir.path().join("journal")).unwrap().count();
        eprintln!(
            "round {round}: {} kept confirmed, {segments} segments",
            confirmed.lock().unwrap().len()
        );
    }
    // Every confirmed kept message is there, once, intact, in order.
    let (_conn, channel) = connect(&broker.url()).await;
    let present = drain(&channel, "keep").await;
    eprintln!("work left: {}", drain(&channel, "work").await.len());
    let confirmed = confirmed.lock().unwrap().clone();
    let present_set: HashSet<u64> = present.iter().copied().collect();
    let missing: Vec<u64> =
        confirmed.iter().filter(|id| !present_set.contains(id)).copied().collect();
    assert!(missing.is_empty(), "confirmed but lost: {missing:?}");
    assert!(present.windows(2).all(|w| w[0] < w[1]), "out of order or duplicated");
    assert!(confirmed.len() > 50, "the load kept only {} messages", confirmed.len());
}

/// Publishes one persistent message at a time with confirms, returning (acked, nacked) ids.
async fn publish_until_nacked(channel: &Channel, queue: &str, count: u64) -> (Vec<u64>, Vec<u64>) {
    let (mut acked, mut nacked) = (Vec::new(), Vec::new());
    for id in 0..count {
        let props = BasicProperties::default().with_delivery_mode(2);
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body(id),
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        if confirm.is_ack() { acked.push(id) } else { nacked.push(id) }
    }
    (acked, nacked)
}

async fn injected_failure_nacks_and_keeps_what_was_confirmed(failpoint: &str) {
    let dir = tempfile::tempdir().unwrap();
    let env = [("POSTROOM_FAILPOINTS", failpoint)];
    let mut broker =
        ChildBroker::start_with_env(Path::new(BIN), dir.path(), &["--log", "error"], &env);
    let (conn, channel) = connect(&broker.url()).await;
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let options = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare("faulty".into(), options, FieldTable::default()).await.unwrap();
    let (acked, nacked) = publish_until_nacked(&channel, "faulty", 20).await;
    assert!(!acked.is_empty(), "{failpoint}: some publishes succeed before the failure");
    assert!(!nacked.is_empty(), "{failpoint}: the failure surfaces as basic.nack");
    let first_nack = nacked[0];
    assert!(
        acked.iter().all(|id| *id < first_nack) && nacked.iter().all(|id| *id >= first_nack),
        "{failpoint}: once the store fails, every later publish is nacked"
    );
    drop(conn);
    broker.restart(&["--log", "error"]);
    let (_conn, channel) = connect(&broker.url()).await;
    let present: HashSet<u64> = drain(&channel, "faulty").await.into_iter().collect();
    for id in &acked {
        assert!(present.contains(id), "{failpoint}: confirmed message {id} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_write_failure_nacks_and_keeps_what_was_confirmed() {
    injected_failure_nacks_and_keeps_what_was_confirmed("write:4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_sync_failure_nacks_and_keeps_what_was_confirmed() {
    injected_failure_nacks_and_keeps_what_was_confirmed("sync:4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_failure_closes_the_connection_of_a_publisher_without_confirms() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("POSTROOM_FAILPOINTS", "write:2")];
    let broker = ChildBroker::start_with_env(Path::new(BIN), dir.path(), &["--log", "error"], &env);
    let (conn, channel) = connect(&broker.url()).await;
    let options = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare("faulty".into(), options, FieldTable::default()).await.unwrap();
    let mut closed = false;
    for id in 0..200 {
        let props = BasicProperties::default().with_delivery_mode(2);
        let sent = channel
            .basic_publish(
                "".into(),
                "faulty".into(),
                BasicPublishOptions::default(),
                &body(id),
                props,
            )
            .await;
        if sent.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(closed || !conn.status().connected(), "the publisher learns of the failure");
}
