//! Journal benchmarks: group-committed appends of 256-byte payloads (what one persistent
//! publish costs the store), and recovery of a journal.
//!
//! Run with `cargo bench -p postroom-store`.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use postroom_store::{Durability, FileStore, Store, StoreConfig};

const PAYLOAD: [u8; 256] = [7; 256];

fn config(durability: Durability) -> StoreConfig {
    StoreConfig { durability, ..StoreConfig::default() }
}

/// Appends `n` payloads as fast as possible and waits until the last one is durable: the
/// commit thread batches them, as it batches concurrent publishers.
fn append_batch(store: &FileStore, n: u64) {
    let mut progress = store.progress();
    let mut last = 0;
    for _ in 0..n {
        last = store.append(&[1], &PAYLOAD).expect("append").1;
    }
    while progress.borrow_and_update().durable < last {
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn appends(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_256b_until_durable");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    for (name, durability) in [("fsync", Durability::Fsync), ("none", Durability::None)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = FileStore::open(dir.path(), config(durability)).expect("open");
        for batch in [1u64, 1000] {
            group.throughput(Throughput::Elements(batch));
            group.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, &batch| {
                b.iter(|| append_batch(&store, batch))
            });
        }
    }
    group.finish();
}

fn recovery(c: &mut Criterion) {
    let mut group = c.benchmark_group("recover");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    let messages = 200_000u64;
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let store = FileStore::open(dir.path(), config(Durability::None)).expect("open");
        append_batch(&store, messages);
        store.close().expect("close");
    }
    group.throughput(Throughput::Elements(messages));
    group.bench_function("200k_messages_256b", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let start = Instant::now();
                let store = FileStore::open(dir.path(), config(Durability::None)).expect("open");
                let recovered = store.take_recovered();
                total += start.elapsed();
                assert_eq!(recovered.queues.values().map(|refs| refs.len()).sum::<u64>(), messages);
                store.close().expect("close");
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, appends, recovery);
criterion_main!(benches);
