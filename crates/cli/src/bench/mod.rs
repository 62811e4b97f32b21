//! `postroom bench`: a load generator for any AMQP 0-9-1 broker (Postroom, RabbitMQ, …),
//! so that every broker is measured the same way.
//!
//! Producers publish `size`-byte messages whose first 8 bytes carry the send time (ns since
//! the run started; producers and consumers share the process clock), consumers record the
//! end-to-end latency of each delivery. The run ends after `--count` messages or
//! `--duration` seconds, whichever is given (`--count` wins), plus up to `--drain` seconds
//! (10) for consumers to drain.
//!
//! Two modes exercise the broker's scheduling:
//! - `--delayed-exchange` with `--delay`/`--delay-max` publishes through an
//!   `x-delayed-message` exchange (the RabbitMQ plugin's convention), each message asking
//!   for an `x-delay` drawn from a seeded PRNG (see [`delay`]).
//! - `--retries N` makes consumers `basic.nack` (requeue) each delivery until its
//!   `x-delivery-count` header reaches N, then ack it; on a queue with `x-retry-*`
//!   arguments that measures the nack → backoff → redelivery cycle. A message counts as
//!   consumed, and its latency (send to final delivery, backoff included) is recorded, only
//!   at that final ack.

mod client;
mod delay;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use postroom_amqp::method::*;
use postroom_amqp::{FieldTable, FieldValue, Frame, Method, ShortStr};
use tokio::sync::Semaphore;

use client::{Url, call};
use delay::PublishProperties;

/// `postroom bench` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Broker URL
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    url: String,
    /// Publishing connections
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Consuming connections per queue (0: publish only, e.g. to build a backlog)
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
    /// Keep the queues after the run (e.g. a backlog to measure)
    #[arg(long)]
    keep: bool,
    /// Queue name (with --fanout, the prefix of the queue names)
    #[arg(long, default_value = "postroom-bench")]
    queue: String,
    /// Queue argument as KEY=VALUE; repeatable. Integers are sent as 64-bit integers,
    /// other finite numbers (`0.0`, `1.5`, `1e3`) as doubles, `true`/`false` as booleans,
    /// anything else as a string
    #[arg(long = "queue-arg")]
    queue_args: Vec<String>,
    /// Publish to a fanout exchange bound to this many queues
    #[arg(long, default_value_t = 0)]
    fanout: usize,
    /// Publish through an `x-delayed-message` exchange of this name (`x-delayed-type` =
    /// direct, durable with --persistent), declared afresh and bound to the bench queue
    /// with the queue name as routing key
    #[arg(long, value_name = "NAME")]
    delayed_exchange: Option<String>,
    /// Give every message the header `x-delay: MS` (needs --delayed-exchange)
    #[arg(long, value_name = "MS")]
    delay: Option<u64>,
    /// Draw each message's `x-delay` uniformly from [--delay, MS] instead
    #[arg(long, value_name = "MS", requires = "delay")]
    delay_max: Option<u64>,
    /// Seed of the PRNG that draws delays (each producer derives its own stream from it)
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Consumers nack (requeue=true) each delivery whose `x-delivery-count` header is below
    /// N (absent: 0) and ack it at N; a message counts as consumed only then. Pair with
    /// `--queue-arg x-retry-initial-delay=MS` (or a broker that counts deliveries)
    #[arg(long, value_name = "N", default_value_t = 0)]
    retries: u32,
    /// Seconds to wait after publishing for consumers to receive the rest
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    drain: u64,
    /// Print one JSON object instead of the table
    #[arg(long)]
    json: bool,
    /// Do not draw the progress bar
    #[arg(long)]
    quiet: bool,
}

/// The header a redelivery carries: how many times the message was delivered before.
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";
/// The exchange type of a delayed exchange (the RabbitMQ plugin's name).
const DELAYED_EXCHANGE_TYPE: &str = "x-delayed-message";
/// The argument naming how a delayed exchange routes once a delay is over.
const DELAYED_TYPE_ARGUMENT: &str = "x-delayed-type";

impl BenchArgs {
    /// Refuses contradictory or incomplete settings before anything is declared.
    ///
    /// # Errors
    /// A message naming the offending flags.
    fn validate(&self) -> anyhow::Result<()> {
        if self.producers == 0 {
            bail!("--producers must be at least 1");
        }
        if self.delay.is_some() && self.delayed_exchange.is_none() {
            bail!("--delay needs --delayed-exchange (only a delayed exchange reads x-delay)");
        }
        if let (Some(min), Some(max)) = (self.delay, self.delay_max)
            && max < min
        {
            bail!("--delay-max ({max}) must be at least --delay ({min})");
        }
        if self.delayed_exchange.is_some() && self.fanout > 0 {
            bail!("--delayed-exchange and --fanout both name the exchange to publish to");
        }
        if self.retries > 0 && (self.consumers == 0 || self.auto_ack) {
            bail!("--retries needs consumers that acknowledge (--consumers 1+, no --auto-ack)");
        }
        Ok(())
    }
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    consumed: AtomicU64,
    /// Deliveries the consumers returned with `basic.nack` (requeue) under --retries.
    retried: AtomicU64,
    errors: AtomicU64,
    /// Set when consumers must stop waiting for messages that did not come.
    abandon: AtomicBool,
}

fn queue_arguments(args: &BenchArgs) -> anyhow::Result<FieldTable> {
    let mut table = FieldTable::new();
    for arg in &args.queue_args {
        let (key, value) = arg.split_once('=').context("--queue-arg takes KEY=VALUE")?;
        table.insert(key, argument_value(value));
    }
    Ok(table)
}

/// A `--queue-arg` value as the field type a broker expects of it: brokers check numeric
/// arguments by type, so `x-retry-jitter=0.0` must travel as a number, not a string.
fn argument_value(value: &str) -> FieldValue {
    if let Ok(n) = value.parse::<i64>() {
        return FieldValue::I64(n);
    }
    // `f64::from_str` also accepts "inf" and "NaN", which are more likely meant as text.
    if let Ok(x) = value.parse::<f64>()
        && x.is_finite()
    {
        return FieldValue::F64(x);
    }
    match value {
        "true" => FieldValue::Bool(true),
        "false" => FieldValue::Bool(false),
        _ => FieldValue::string(value),
    }
}

fn queue_names(args: &BenchArgs) -> Vec<String> {
    if args.fanout == 0 {
        vec![args.queue.clone()]
    } else {
        (0..args.fanout).map(|i| format!("{}-{i}", args.queue)).collect()
    }
}

async fn expect_reply(
    reader: &mut client::Reader,
    writer: &mut client::Writer,
    method: impl Into<Method>,
    what: &str,
) -> anyhow::Result<Method> {
    call(reader, writer, method).await.with_context(|| what.to_string())
}

/// Declares the queues (and the fanout or delayed exchange), returning the exchange to
/// publish to.
async fn declare(args: &BenchArgs, url: &Url) -> anyhow::Result<String> {
    let (mut reader, mut writer) = client::connect(url).await?;
    let arguments = queue_arguments(args)?;
    for queue in queue_names(args) {
        let delete = QueueDelete { queue: queue.as_str().into(), ..Default::default() };
        expect_reply(&mut reader, &mut writer, delete, "deleting an old bench queue").await?;
        let declare = QueueDeclare {
            queue: queue.as_str().into(),
            durable: args.persistent,
            arguments: arguments.clone(),
            ..Default::default()
        };
        expect_reply(&mut reader, &mut writer, declare, "declaring the bench queue").await?;
    }
    if let Some(exchange) = &args.delayed_exchange {
        declare_delayed(args, exchange, &mut reader, &mut writer).await?;
        client::close(reader, writer).await;
        return Ok(exchange.clone());
    }
    if args.fanout == 0 {
        client::close(reader, writer).await;
        return Ok(String::new());
    }
    let exchange = format!("{}-fanout", args.queue);
    let declare = ExchangeDeclare {
        exchange: exchange.as_str().into(),
        kind: "fanout".into(),
        durable: args.persistent,
        ..Default::default()
    };
    expect_reply(&mut reader, &mut writer, declare, "declaring the fanout exchange").await?;
    for queue in queue_names(args) {
        let bind = QueueBind {
            queue: queue.as_str().into(),
            exchange: exchange.as_str().into(),
            ..Default::default()
        };
        expect_reply(&mut reader, &mut writer, bind, "binding a bench queue").await?;
    }
    client::close(reader, writer).await;
    Ok(exchange)
}

/// Declares the delayed exchange afresh (dropping what an old one held) and binds the
/// bench queue to it by name.
async fn declare_delayed(
    args: &BenchArgs,
    exchange: &str,
    reader: &mut client::Reader,
    writer: &mut client::Writer,
) -> anyhow::Result<()> {
    let delete = ExchangeDelete { exchange: exchange.into(), ..Default::default() };
    expect_reply(reader, writer, delete, "deleting an old delayed exchange").await?;
    let mut arguments = FieldTable::new();
    arguments.insert(DELAYED_TYPE_ARGUMENT, FieldValue::string("direct"));
    let declare = ExchangeDeclare {
        exchange: exchange.into(),
        kind: DELAYED_EXCHANGE_TYPE.into(),
        durable: args.persistent,
        arguments,
        ..Default::default()
    };
    expect_reply(reader, writer, declare, "declaring the delayed exchange").await?;
    let bind = QueueBind {
        queue: args.queue.as_str().into(),
        exchange: exchange.into(),
        routing_key: args.queue.as_str().into(),
        ..Default::default()
    };
    expect_reply(reader, writer, bind, "binding the bench queue to the delayed exchange").await?;
    Ok(())
}

/// Counts confirms (acks with or without `multiple`, in any order) and returns window
/// permits as they come.
#[derive(Default)]
struct ConfirmTracker {
    contiguous: u64,
    above: BTreeSet<u64>,
}

impl ConfirmTracker {
    /// Records a confirm, returning how many publishes it newly settled.
    fn settle(&mut self, tag: u64, multiple: bool) -> u64 {
        let before = self.contiguous + self.above.len() as u64;
        if multiple && tag > self.contiguous {
            self.contiguous = tag;
            self.above = self.above.split_off(&(tag + 1));
        } else if tag > self.contiguous {
            self.above.insert(tag);
        }
        while self.above.remove(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
        (self.contiguous + self.above.len() as u64).saturating_sub(before)
    }
}

#[allow(clippy::too_many_arguments)]
async fn produce(
    args: Arc<BenchArgs>,
    producer: usize,
    url: Url,
    exchange: String,
    quota: u64,
    start: Instant,
    deadline: Instant,
    counters: Arc<Counters>,
) -> anyhow::Result<()> {
    let (mut reader, mut writer) = client::connect(&url).await?;
    let window = Arc::new(Semaphore::new(args.confirm));
    let (confirms, reader) = if args.confirm > 0 {
        let reply = call(&mut reader, &mut writer, ConfirmSelect { nowait: false }).await?;
        if !matches!(reply, Method::ConfirmSelectOk(_)) {
            bail!("expected confirm.select-ok, got {}", reply.name());
        }
        let (window, counters) = (window.clone(), counters.clone());
        let confirms = Some(tokio::spawn(async move {
            let mut tracker = ConfirmTracker::default();
            loop {
                let (tag, multiple, acked) = match reader.frame().await {
                    Ok(Frame::Method { method: Method::BasicAck(a), .. }) => {
                        (a.delivery_tag, a.multiple, true)
                    }
                    Ok(Frame::Method { method: Method::BasicNack(n), .. }) => {
                        (n.delivery_tag, n.multiple, false)
                    }
                    Ok(_) => continue,
                    Err(_) => break,
                };
                let settled = tracker.settle(tag, multiple);
                let counter = if acked { &counters.confirmed } else { &counters.nacked };
                counter.fetch_add(settled, Ordering::Relaxed);
                window.add_permits(settled as usize);
            }
        }));
        (confirms, None)
    } else {
        (None, Some(reader))
    };
    let routing_key: ShortStr =
        if args.fanout > 0 { ShortStr::EMPTY } else { args.queue.as_str().into() };
    let exchange: ShortStr = exchange.as_str().into();
    let mut properties = PublishProperties::new(&args, producer);
    let mut body = vec![0u8; args.size.max(8)];
    let per_ms = args.rate as f64 / args.producers as f64 / 1000.0;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut allowance = 0.0f64;
    let mut sent = 0u64;
    while sent < quota && Instant::now() < deadline {
        let mut batch = (quota - sent).min(64);
        if args.rate > 0 {
            if allowance < 1.0 {
                tick.tick().await;
                allowance += per_ms;
                continue;
            }
            batch = batch.min(allowance as u64);
            allowance -= batch as f64;
        }
        if args.confirm > 0 {
            batch = batch.min(args.confirm as u64);
            window.acquire_many(batch as u32).await?.forget();
        }
        for _ in 0..batch {
            let now = start.elapsed().as_nanos() as u64;
            body[..8].copy_from_slice(&now.to_be_bytes());
            writer.publish(&exchange, &routing_key, properties.next_raw(), &body);
        }
        writer.flush().await?;
        sent += batch;
        counters.published.fetch_add(batch, Ordering::Relaxed);
    }
    if let Some(confirms) = confirms {
        let all = window.acquire_many(args.confirm as u32);
        if tokio::time::timeout(Duration::from_secs(30), all).await.is_err() {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        confirms.abort();
    }
    if let Some(reader) = reader {
        client::close(reader, writer).await;
    }
    Ok(())
}

async fn consume(
    args: Arc<BenchArgs>,
    url: Url,
    queue: String,
    start: Instant,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) -> anyhow::Result<Histogram<u64>> {
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let (mut reader, mut writer) = client::connect(&url).await?;
    let qos = BasicQos { prefetch_size: 0, prefetch_count: args.prefetch, global: false };
    call(&mut reader, &mut writer, qos).await?;
    let consume =
        BasicConsume { queue: queue.as_str().into(), no_ack: args.auto_ack, ..Default::default() };
    call(&mut reader, &mut writer, consume).await?;
    let mut since_ack = 0u64;
    let mut tag = 0u64;
    let mut delivery_count = 0u64;
    let mut remaining = 0u64;
    let mut parts: Vec<Bytes> = Vec::new();
    loop {
        if !reader.has_frame() {
            writer.flush().await?;
        }
        let frame = match tokio::time::timeout(Duration::from_millis(200), reader.frame()).await {
            Ok(frame) => frame?,
            Err(_) if stop.load(Ordering::Relaxed) && consumer_done(&counters, &args) => break,
            Err(_) if counters.abandon.load(Ordering::Relaxed) => break,
            Err(_) => continue,
        };
        let complete = match frame {
            Frame::Method { method: Method::BasicDeliver(d), .. } => {
                tag = d.delivery_tag;
                false
            }
            Frame::Header { header, .. } => {
                remaining = header.body_size;
                delivery_count = header
                    .properties
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get(DELIVERY_COUNT_HEADER))
                    .and_then(FieldValue::as_int)
                    .map_or(0, |count| count.max(0) as u64);
                remaining == 0
            }
            Frame::Body { payload, .. } => {
                remaining = remaining.saturating_sub(payload.len() as u64);
                parts.push(payload);
                remaining == 0
            }
            Frame::Method { method: Method::ChannelClose(c), .. } => {
                bail!("channel closed by the broker: {} {}", c.reply_code, c.reply_text)
            }
            _ => false,
        };
        if !complete {
            continue;
        }
        let body = client::body_of(&mut parts);
        if delivery_count < u64::from(args.retries) {
            writer.method(BasicNack { delivery_tag: tag, multiple: false, requeue: true });
            counters.retried.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if body.len() >= 8 {
            let sent = u64::from_be_bytes(body[..8].try_into()?);
            let now = start.elapsed().as_nanos() as u64;
            let _ = latencies.record(now.saturating_sub(sent).max(1000) / 1000);
        }
        counters.consumed.fetch_add(1, Ordering::Relaxed);
        if !args.auto_ack {
            since_ack += 1;
            if since_ack >= args.ack_every {
                writer.method(BasicAck { delivery_tag: tag, multiple: args.ack_every > 1 });
                since_ack = 0;
            }
        }
    }
    writer.flush().await?;
    client::close(reader, writer).await;
    Ok(latencies)
}

fn consumer_done(counters: &Counters, args: &BenchArgs) -> bool {
    if args.consumers == 0 {
        return true;
    }
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
    /// `[min, max]` of the `x-delay` asked for, when publishing through a delayed exchange.
    delay_ms: Option<[u64; 2]>,
    /// The PRNG seed the delays were drawn with.
    seed: u64,
    /// The `x-delivery-count` a message must reach before it is acked (0: no retries).
    retries: u32,
    /// Deliveries nacked for a retry.
    retried: u64,
    /// Nack → redelivery cycles per second over the run.
    retry_rate: f64,
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
    args.validate()?;
    let args = Arc::new(args);
    let url = Url::parse(&args.url)?;
    let exchange = declare(&args, &url).await?;
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut consumers = Vec::new();
    for queue in queue_names(&args) {
        for _ in 0..args.consumers {
            let task = consume(
                args.clone(),
                url.clone(),
                queue.clone(),
                start,
                stop.clone(),
                counters.clone(),
            );
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
        let task = produce(
            args.clone(),
            i,
            url.clone(),
            exchange.clone(),
            quota,
            start,
            deadline,
            counters.clone(),
        );
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
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain);
    while !consumer_done(&counters, &args) && Instant::now() < drain_deadline {
        ticker.tick().await;
        update_bar(&bar, &counters, start);
    }
    counters.abandon.store(true, Ordering::Relaxed);
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    for consumer in consumers {
        latencies.add(consumer.await??)?;
    }
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let published = counters.published.load(Ordering::Relaxed);
    let consumed = counters.consumed.load(Ordering::Relaxed);
    let retried = counters.retried.load(Ordering::Relaxed);
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
        delay_ms: args.delay.map(|min| [min, args.delay_max.unwrap_or(min)]),
        seed: args.seed,
        retries: args.retries,
        retried,
        retry_rate: retried as f64 / seconds,
        latency_us: Latency {
            p50: latencies.value_at_quantile(0.50),
            p95: latencies.value_at_quantile(0.95),
            p99: latencies.value_at_quantile(0.99),
            max: latencies.max(),
        },
    };
    if !args.keep {
        cleanup(&args, &url, &exchange).await;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

async fn cleanup(args: &BenchArgs, url: &Url, exchange: &str) {
    let Ok((mut reader, mut writer)) = client::connect(url).await else { return };
    for queue in queue_names(args) {
        let delete = QueueDelete { queue: queue.as_str().into(), ..Default::default() };
        let _ = call(&mut reader, &mut writer, delete).await;
    }
    if !exchange.is_empty() {
        let delete = ExchangeDelete { exchange: exchange.into(), ..Default::default() };
        let _ = call(&mut reader, &mut writer, delete).await;
    }
    client::close(reader, writer).await;
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
    if let Some([min, max]) = r.delay_ms {
        println!("x-delay         {min}..={max} ms (seed {})", r.seed);
    }
    if r.retries > 0 {
        println!(
            "retried         {} ({:.0}/s), acked at x-delivery-count {}",
            r.retried, r.retry_rate, r.retries
        );
    }
    println!(
        "latency (µs)    p50 {}  p95 {}  p99 {}  max {}",
        r.latency_us.p50, r.latency_us.p95, r.latency_us.p99, r.latency_us.max
    );
    println!("errors          {}", r.errors);
}

#[cfg(test)]
pub(crate) mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    /// `postroom bench` arguments as the command line would give them.
    pub(crate) fn bench_args(flags: &[&str]) -> BenchArgs {
        let argv = std::iter::once("bench").chain(flags.iter().copied());
        match Cli::try_parse_from(argv) {
            Ok(cli) => cli.bench,
            Err(e) => panic!("bad test flags {flags:?}: {e}"),
        }
    }

    #[test]
    fn queue_arguments_travel_as_the_types_brokers_check() {
        let args = bench_args(&[
            "--queue-arg",
            "x-retry-initial-delay=10",
            "--queue-arg",
            "x-retry-jitter=0.0",
            "--queue-arg",
            "x-retry-multiplier=1.5",
            "--queue-arg",
            "x-single-active-consumer=true",
            "--queue-arg",
            "x-queue-type=quorum",
            "--queue-arg",
            "x-note=inf",
        ]);
        let table = queue_arguments(&args).ok();
        let get = |key: &str| table.as_ref().and_then(|t| t.get(key)).cloned();
        assert_eq!(get("x-retry-initial-delay"), Some(FieldValue::I64(10)));
        assert_eq!(get("x-retry-jitter"), Some(FieldValue::F64(0.0)));
        assert_eq!(get("x-retry-multiplier"), Some(FieldValue::F64(1.5)));
        assert_eq!(get("x-single-active-consumer"), Some(FieldValue::Bool(true)));
        assert_eq!(get("x-queue-type"), Some(FieldValue::string("quorum")));
        assert_eq!(get("x-note"), Some(FieldValue::string("inf")));
    }

    #[test]
    fn a_queue_argument_without_a_value_is_refused() {
        assert!(queue_arguments(&bench_args(&["--queue-arg", "x-max-length"])).is_err());
    }

    #[test]
    fn contradictory_flags_are_refused_before_connecting() {
        let refused = |flags: &[&str]| bench_args(flags).validate().is_err();
        assert!(refused(&["--producers", "0"]));
        assert!(refused(&["--delay", "10"]));
        assert!(refused(&["--delayed-exchange", "d", "--delay", "10", "--delay-max", "5"]));
        assert!(refused(&["--delayed-exchange", "d", "--fanout", "2"]));
        assert!(refused(&["--retries", "3", "--consumers", "0"]));
        assert!(refused(&["--retries", "3", "--auto-ack"]));
        assert!(Cli::try_parse_from(["bench", "--delay-max", "5"]).is_err());
        assert!(!refused(&["--delayed-exchange", "d", "--delay", "10", "--delay-max", "10"]));
        assert!(!refused(&["--retries", "3"]));
    }

    #[test]
    fn confirms_settle_once_in_any_order() {
        let mut tracker = ConfirmTracker::default();
        assert_eq!(tracker.settle(2, false), 1);
        assert_eq!(tracker.settle(2, false), 0);
        assert_eq!(tracker.settle(5, true), 4);
        assert_eq!(tracker.settle(3, false), 0);
    }
}
