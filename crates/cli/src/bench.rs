//! `postroom bench`: a load generator for any AMQP 0-9-1 broker (Postroom, RabbitMQ, …),
//! so that every broker is measured the same way.
//!
//! Producers publish `size`-byte messages whose first 8 bytes carry the send time (ns since
//! the run started; producers and consumers share the process clock), consumers record the
//! end-to-end latency of each delivery. The run ends after `--count` messages or
//! `--duration` seconds, whichever is given (`--count` wins), plus up to 10 s for consumers
//! to drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_lite::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

/// `postroom bench` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Broker URL
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    url: String,
    /// Publishing connections
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Consuming connections (per queue)
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Message body size in bytes (at least 8: the send time)
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Messages to publish in total (overrides --duration)
    #[arg(long)]
    count: Option<u64>,
    /// Seconds to publish for
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Persistent messages (delivery_mode 2) on a durable queue
    #[arg(long)]
    persistent: bool,
    /// Publisher confirms with at most this many unconfirmed messages per producer (0: off)
    #[arg(long, default_value_t = 0)]
    confirm: usize,
    /// Consumer prefetch (basic.qos)
    #[arg(long, default_value_t = 1000)]
    prefetch: u16,
    /// Acknowledge every Nth delivery with multiple=true (1: one ack per message)
    #[arg(long, default_value_t = 1)]
    ack_every: u64,
    /// Consume with no_ack (auto-ack)
    #[arg(long)]
    auto_ack: bool,
    /// Total publish rate in messages per second (0: as fast as possible)
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Queue name (with --fanout, the prefix of the queue names)
    #[arg(long, default_value = "postroom-bench")]
    queue: String,
    /// Queue argument as KEY=VALUE (integers are sent as numbers); repeatable
    #[arg(long = "queue-arg")]
    queue_args: Vec<String>,
    /// Publish to a fanout exchange bound to this many queues
    #[arg(long, default_value_t = 0)]
    fanout: usize,
    /// Print one JSON object instead of the table
    #[arg(long)]
    json: bool,
    /// Do not draw the progress bar
    #[arg(long)]
    quiet: bool,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    consumed: AtomicU64,
    errors: AtomicU64,
}

fn queue_arguments(args: &BenchArgs) -> anyhow::Result<FieldTable> {
    let mut table = FieldTable::default();
    for arg in &args.queue_args {
        let (key, value) = arg.split_once('=').context("--queue-arg takes KEY=VALUE")?;
        let value = match value.parse::<i64>() {
            Ok(n) => AMQPValue::LongLongInt(n),
            Err(_) => AMQPValue::LongString(value.into()),
        };
        table.insert(ShortString::from(key), value);
    }
    Ok(table)
}

fn queue_names(args: &BenchArgs) -> Vec<String> {
    if args.fanout == 0 {
        vec![args.queue.clone()]
    } else {
        (0..args.fanout).map(|i| format!("{}-{i}", args.queue)).collect()
    }
}

async fn connect(url: &str) -> anyhow::Result<(Connection, Channel)> {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let channel = conn.create_channel().await?;
    Ok((conn, channel))
}

async fn declare(args: &BenchArgs) -> anyhow::Result<String> {
    let (conn, channel) = connect(&args.url).await?;
    let arguments = queue_arguments(args)?;
    for queue in queue_names(args) {
        let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
        let options = QueueDeclareOptions { durable: args.persistent, ..Default::default() };
        channel.queue_declare(queue.as_str().into(), options, arguments.clone()).await?;
    }
    let exchange = if args.fanout > 0 {
        let exchange = format!("{}-fanout", args.queue);
        let options = ExchangeDeclareOptions { durable: args.persistent, ..Default::default() };
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Fanout,
                options,
                FieldTable::default(),
            )
            .await?;
        for queue in queue_names(args) {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        exchange
    } else {
        String::new()
    };
    conn.close(200, "declared".into()).await?;
    Ok(exchange)
}

#[allow(clippy::too_many_arguments)]
async fn produce(
    args: Arc<BenchArgs>,
    exchange: String,
    quota: u64,
    start: Instant,
    deadline: Instant,
    counters: Arc<Counters>,
) -> anyhow::Result<()> {
    let (conn, channel) = connect(&args.url).await?;
    if args.confirm > 0 {
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
    }
    let routing_key = if args.fanout > 0 { String::new() } else { args.queue.clone() };
    let mut properties = BasicProperties::default();
    if args.persistent {
        properties = properties.with_delivery_mode(2);
    }
    let mut body = vec![0u8; args.size.max(8)];
    let mut outstanding = std::collections::VecDeque::new();
    let per_tick = (args.rate as f64 / args.producers as f64 / 1000.0).max(0.0);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut allowance = 0.0f64;
    let mut sent = 0u64;
    while sent < quota && Instant::now() < deadline {
        if args.rate > 0 {
            if allowance < 1.0 {
                tick.tick().await;
                allowance += per_tick;
                continue;
            }
            allowance -= 1.0;
        }
        let now = start.elapsed().as_nanos() as u64;
        body[..8].copy_from_slice(&now.to_be_bytes());
        let confirm = channel
            .basic_publish(
                exchange.as_str().into(),
                routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                properties.clone(),
            )
            .await?;
        sent += 1;
        counters.published.fetch_add(1, Ordering::Relaxed);
        if args.confirm > 0 {
            outstanding.push_back(confirm);
            while outstanding.len() >= args.confirm {
                if let Some(first) = outstanding.pop_front() {
                    settle(first.await, &counters);
                }
            }
        }
    }
    for confirm in outstanding {
        settle(confirm.await, &counters);
    }
    conn.close(200, "done".into()).await?;
    Ok(())
}

fn settle(result: lapin::Result<lapin::Confirmation>, counters: &Counters) {
    match result {
        Ok(c) if c.is_ack() => counters.confirmed.fetch_add(1, Ordering::Relaxed),
        Ok(_) => counters.nacked.fetch_add(1, Ordering::Relaxed),
        Err(_) => counters.errors.fetch_add(1, Ordering::Relaxed),
    };
}

async fn consume(
    args: Arc<BenchArgs>,
    queue: String,
    start: Instant,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) -> anyhow::Result<Histogram<u64>> {
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let (conn, channel) = connect(&args.url).await?;
    channel.basic_qos(args.prefetch, BasicQosOptions::default()).await?;
    let options = BasicConsumeOptions { no_ack: args.auto_ack, ..Default::default() };
    let mut consumer = channel
        .basic_consume(queue.as_str().into(), "".into(), options, FieldTable::default())
        .await?;
    let mut since_ack = 0u64;
    loop {
        let next = tokio::time::timeout(Duration::from_millis(200), consumer.next()).await;
        let delivery = match next {
            Ok(Some(Ok(delivery))) => delivery,
            Ok(Some(Err(_))) | Ok(None) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Err(_) if stop.load(Ordering::Relaxed) => break,
            Err(_) => continue,
        };
        if delivery.data.len() >= 8 {
            let sent = u64::from_be_bytes(delivery.data[..8].try_into()?);
            let now = start.elapsed().as_nanos() as u64;
            let _ = latencies.record(now.saturating_sub(sent).max(1000) / 1000);
        }
        counters.consumed.fetch_add(1, Ordering::Relaxed);
        if !args.auto_ack {
            since_ack += 1;
            if since_ack >= args.ack_every {
                let multiple = args.ack_every > 1;
                delivery.acker.ack(BasicAckOptions { multiple }).await?;
                since_ack = 0;
            }
        }
        if stop.load(Ordering::Relaxed) && consumer_done(&counters, &args) {
            break;
        }
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(latencies)
}

fn consumer_done(counters: &Counters, args: &BenchArgs) -> bool {
    let expected = counters.published.load(Ordering::Relaxed) * args.fanout.max(1) as u64;
    counters.consumed.load(Ordering::Relaxed) >= expected
}

/// The measured result.
#[derive(Debug, serde::Serialize)]
struct Report {
    url: String,
    producers: usize,
    consumers: usize,
    size: usize,
    persistent: bool,
    confirm_window: usize,
    queues: usize,
    seconds: f64,
    published: u64,
    confirmed: u64,
    nacked: u64,
    consumed: u64,
    errors: u64,
    publish_rate: f64,
    consume_rate: f64,
    latency_us: Latency,
}

#[derive(Debug, serde::Serialize)]
struct Latency {
    p50: u64,
    p95: u64,
    p99: u64,
    max: u64,
}

/// Runs the benchmark and prints the report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.producers == 0 || args.consumers == 0 {
        bail!("--producers and --consumers must be at least 1");
    }
    let args = Arc::new(args);
    let exchange = declare(&args).await?;
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut consumers = Vec::new();
    for queue in queue_names(&args) {
        for _ in 0..args.consumers {
            let task = consume(args.clone(), queue.clone(), start, stop.clone(), counters.clone());
            consumers.push(tokio::spawn(task));
        }
    }
    let (quota, deadline) = match args.count {
        Some(count) => (count.div_ceil(args.producers as u64), start + Duration::from_secs(3600)),
        None => (u64::MAX, start + Duration::from_secs(args.duration)),
    };
    let mut producers = Vec::new();
    for i in 0..args.producers {
        let quota = match args.count {
            Some(count) => quota.min(count.saturating_sub(quota * i as u64)),
            None => quota,
        };
        let task =
            produce(args.clone(), exchange.clone(), quota, start, deadline, counters.clone());
        producers.push(tokio::spawn(task));
    }
    let bar = progress_bar(&args);
    let publishing = async {
        for producer in producers {
            producer.await??;
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::pin!(publishing);
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            result = &mut publishing => { result?; break; }
            _ = ticker.tick() => update_bar(&bar, &counters, start),
        }
    }
    let published_at = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while !consumer_done(&counters, &args) && Instant::now() < drain_deadline {
        ticker.tick().await;
        update_bar(&bar, &counters, start);
    }
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    for consumer in consumers {
        latencies.add(consumer.await??)?;
    }
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let published = counters.published.load(Ordering::Relaxed);
    let consumed = counters.consumed.load(Ordering::Relaxed);
    let report = Report {
        url: args.url.clone(),
        producers: args.producers,
        consumers: args.consumers,
        size: args.size.max(8),
        persistent: args.persistent,
        confirm_window: args.confirm,
        queues: args.fanout.max(1),
        seconds,
        published,
        confirmed: counters.confirmed.load(Ordering::Relaxed),
        nacked: counters.nacked.load(Ordering::Relaxed),
        consumed,
        errors: counters.errors.load(Ordering::Relaxed),
        publish_rate: published as f64 / published_at.as_secs_f64(),
        consume_rate: consumed as f64 / seconds,
        latency_us: Latency {
            p50: latencies.value_at_quantile(0.50),
            p95: latencies.value_at_quantile(0.95),
            p99: latencies.value_at_quantile(0.99),
            max: latencies.max(),
        },
    };
    cleanup(&args, &exchange).await;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

async fn cleanup(args: &BenchArgs, exchange: &str) {
    let Ok((conn, channel)) = connect(&args.url).await else { return };
    for queue in queue_names(args) {
        let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    }
    if !exchange.is_empty() {
        let _ = channel.exchange_delete(exchange.into(), ExchangeDeleteOptions::default()).await;
    }
    let _ = conn.close(200, "cleanup".into()).await;
}

fn progress_bar(args: &BenchArgs) -> indicatif::ProgressBar {
    if args.quiet || args.json {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match args.count {
        Some(count) => indicatif::ProgressBar::new(count),
        None => indicatif::ProgressBar::new(args.duration * 1000),
    };
    let style = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

fn update_bar(bar: &indicatif::ProgressBar, counters: &Counters, start: Instant) {
    let published = counters.published.load(Ordering::Relaxed);
    let consumed = counters.consumed.load(Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64().max(0.001);
    if bar.length().is_some_and(|len| len > 0) {
        bar.set_position(published.min(bar.length().unwrap_or(0)));
    }
    bar.set_message(format!(
        "published {published} ({:.0}/s), consumed {consumed} ({:.0}/s)",
        published as f64 / secs,
        consumed as f64 / secs
    ));
}

fn print_table(r: &Report) {
    println!("broker          {}", r.url);
    println!(
        "setup           {} producer(s), {} consumer(s) per queue, {} queue(s), {} B, {}, confirms {}",
        r.producers,
        r.consumers,
        r.queues,
        r.size,
        if r.persistent { "persistent" } else { "transient" },
        if r.confirm_window == 0 {
            "off".to_string()
        } else {
            format!("window {}", r.confirm_window)
        }
    );
    println!("duration        {:.2} s", r.seconds);
    println!("published       {} ({:.0} msg/s)", r.published, r.publish_rate);
    println!("confirmed       {} (nacked {})", r.confirmed, r.nacked);
    println!("consumed        {} ({:.0} msg/s)", r.consumed, r.consume_rate);
    println!(
        "latency (µs)    p50 {}  p95 {}  p99 {}  max {}",
        r.latency_us.p50, r.latency_us.p95, r.latency_us.p99, r.latency_us.max
    );
    println!("errors          {}", r.errors);
}
