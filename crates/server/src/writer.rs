//! A connection's writer task: the only code that writes to the socket.
//!
//! Everything a connection sends — method replies from its reader task, deliveries decided
//! by the broker, heartbeats — goes through one queue, so frames of one channel can never
//! interleave and deliveries leave in the order the broker decided them. The task drains
//! whatever is queued into one buffer and writes it with one syscall, which batches
//! deliveries under load without delaying a lone reply.
//!
//! The queue itself is unbounded (the broker must never block on a slow client while it
//! holds its lock), so its size is bounded by flow control instead, as RabbitMQ's credit
//! flow does: the [`Pressure`] gauge counts the message bytes queued but not yet written.
//! - Past [`DELIVERY_HIGH_WATER`] the broker stops choosing this connection's consumers
//!   ([`Outlet::has_room`]); a consumer without acks (`no_ack`) or with a huge prefetch can
//!   no longer pull a whole backlog into memory faster than the client reads it.
//! - Past [`READ_HIGH_WATER`] the reader task stops reading the client's frames, so a client
//!   that publishes but never reads cannot pile up `basic.return`s and replies either.
//! - When the writer has brought the gauge back under [`LOW_WATER`], it wakes the reader
//!   task, which resumes reading and asks the broker to deliver to the connection again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use postroom_amqp::Method;
use postroom_amqp::frame::{encode_content, encode_heartbeat};
use postroom_amqp::method::BasicDeliver;
use postroom_core::{Message, Outbound, Outlet};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Notify, mpsc};

/// Stop draining the queue into one write past this many buffered bytes.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Queued message bytes past which the broker delivers nothing more to the connection.
pub const DELIVERY_HIGH_WATER: usize = 4 << 20;

/// Queued message bytes past which the connection's frames are no longer read.
pub const READ_HIGH_WATER: usize = 16 << 20;

/// Queued message bytes under which a congested connection is resumed.
pub const LOW_WATER: usize = 1 << 20;

/// What a frame costs in the gauge beyond its message's properties and body: the method and
/// frame headers, roughly. Counting it keeps a flood of empty messages bounded too.
const FRAME_COST: usize = 64;

/// The bytes of messages a connection's writer has queued but not yet written.
///
/// Thread safety: the broker (under its lock, from any task) and the reader task add to it,
/// the writer task subtracts; all atomic. Lost wake-ups are ruled out by the order of
/// operations: a side that finds the gauge high first raises `congested`, then looks again;
/// the writer first lowers the gauge, then takes `congested` down. One of the two always
/// sees the other's write.
#[derive(Debug, Default)]
pub struct Pressure {
    bytes: AtomicUsize,
    congested: AtomicBool,
    drained: Notify,
}

impl Pressure {
    /// Whether fewer than `limit` bytes are queued. When not, the next drain under
    /// [`LOW_WATER`] wakes [`Pressure::drained`].
    pub fn below(&self, limit: usize) -> bool {
        if self.bytes.load(Ordering::SeqCst) < limit {
            return true;
        }
        self.congested.store(true, Ordering::SeqCst);
        self.bytes.load(Ordering::SeqCst) < limit
    }

    /// Completes after the writer brought a congested gauge back under [`LOW_WATER`] (or at
    /// once, if it did so since the last call).
    pub async fn drained(&self) {
        self.drained.notified().await;
    }

    fn add(&self, cost: usize) {
        self.bytes.fetch_add(cost, Ordering::SeqCst);
    }

    fn written(&self, cost: usize) {
        if cost == 0 {
            return;
        }
        let left = self.bytes.fetch_sub(cost, Ordering::SeqCst) - cost;
        if left < LOW_WATER && self.congested.swap(false, Ordering::SeqCst) {
            self.drained.notify_one();
        }
    }
}

/// Something for the writer to send.
#[derive(Debug)]
pub enum WriterMsg {
    /// A method frame without content.
    Method(u16, Method),
    /// A method with content (`basic.get-ok`, `basic.return`).
    Content(u16, Method, Arc<Message>),
    /// An event from the broker.
    Event(Outbound),
    /// A heartbeat frame.
    Heartbeat,
    /// Raw bytes (the protocol header, when refusing a client's).
    Raw(Bytes),
}

impl WriterMsg {
    /// What the message counts for in the connection's [`Pressure`]: the bytes of the
    /// message it carries, if any. Methods without content, heartbeats and raw bytes are
    /// small and bounded by what the client itself sends, so they count for nothing.
    fn cost(&self) -> usize {
        match self {
            WriterMsg::Content(_, _, message)
            | WriterMsg::Event(Outbound::Deliver { message, .. }) => {
                FRAME_COST + message.raw_properties.len() + message.body.len()
            }
            _ => 0,
        }
    }
}

/// The sending side of a connection's writer, given to the broker as its [`Outlet`].
#[derive(Debug, Clone)]
pub struct WriterHandle {
    queue: mpsc::UnboundedSender<WriterMsg>,
    pressure: Arc<Pressure>,
}

impl WriterHandle {
    /// Queues a method frame. A closed writer (the peer went away) drops it.
    pub fn method(&self, channel: u16, method: impl Into<Method>) {
        self.send_msg(WriterMsg::Method(channel, method.into()));
    }

    /// Queues anything.
    pub fn send_msg(&self, msg: WriterMsg) {
        let cost = msg.cost();
        // Counted before it is queued, so the writer never subtracts what was not added.
        self.pressure.add(cost);
        if self.queue.send(msg).is_err() {
            self.pressure.written(cost);
        }
    }

    /// The connection's gauge of queued bytes.
    pub fn pressure(&self) -> &Pressure {
        &self.pressure
    }

    /// A sender that does not keep the writer alive (for heartbeats).
    pub fn downgrade(&self) -> mpsc::WeakUnboundedSender<WriterMsg> {
        self.queue.downgrade()
    }
}

impl Outlet for WriterHandle {
    fn send(&self, event: Outbound) {
        self.send_msg(WriterMsg::Event(event));
    }

    fn has_room(&self) -> bool {
        self.pressure.below(DELIVERY_HIGH_WATER)
    }
}

/// A connection's writer: the handle to give out and the task's end of the queue.
pub fn channel() -> (WriterHandle, mpsc::UnboundedReceiver<WriterMsg>, Arc<Pressure>) {
    let (queue, rx) = mpsc::unbounded_channel();
    let pressure = Arc::new(Pressure::default());
    (WriterHandle { queue, pressure: pressure.clone() }, rx, pressure)
}

fn encode(msg: WriterMsg, frame_max: u32, buf: &mut BytesMut) {
    match msg {
        WriterMsg::Method(channel, method) => method.encode_frame(channel, buf),
        WriterMsg::Content(channel, method, message) => {
            method.encode_frame(channel, buf);
            encode_content(channel, &message.raw_properties, &message.body, frame_max, buf);
        }
        WriterMsg::Event(Outbound::Deliver {
            channel,
            consumer_tag,
            delivery_tag,
            redelivered,
            message,
        }) => {
            let deliver = BasicDeliver {
                consumer_tag,
                delivery_tag,
                redelivered,
                exchange: message.exchange.clone(),
                routing_key: message.routing_key.clone(),
            };
            Method::BasicDeliver(deliver).encode_frame(channel, buf);
            encode_content(channel, &message.raw_properties, &message.body, frame_max, buf);
        }
        WriterMsg::Event(Outbound::Cancel { channel, consumer_tag }) => {
            let cancel = postroom_amqp::method::BasicCancel { consumer_tag, nowait: true };
            Method::BasicCancel(cancel).encode_frame(channel, buf);
        }
        WriterMsg::Heartbeat => encode_heartbeat(buf),
        WriterMsg::Raw(bytes) => buf.extend_from_slice(&bytes),
    }
}

/// Runs until every sender is dropped (then flushes and shuts the socket's write side) or
/// a write fails. `frame_max` is read per message, as it changes once, at tune-ok. Message
/// bytes leave `pressure` once they are written to the socket, not when they are encoded:
/// a client that does not read keeps its writer blocked and its gauge high.
pub async fn run(
    mut socket: OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<WriterMsg>,
    frame_max: Arc<AtomicU32>,
    pressure: Arc<Pressure>,
) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(msg) = queue.recv().await {
        let max = frame_max.load(Ordering::Relaxed);
        let mut cost = msg.cost();
        encode(msg, max, &mut buf);
        // Let the tasks producing for this connection run once before writing, so that under
        // load one write carries many frames instead of one syscall per frame; when idle this
        // costs one trip through the scheduler.
        if queue.is_empty() {
            tokio::task::yield_now().await;
        }
        while buf.len() < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(msg) => {
                    cost += msg.cost();
                    encode(msg, max, &mut buf);
                }
                Err(_) => break,
            }
        }
        socket.write_all(&buf).await?;
        pressure.written(cost);
        buf.clear();
        if buf.capacity() > 4 * MAX_BATCH_BYTES {
            // One large message must not pin megabytes for the life of the connection.
            buf = BytesMut::with_capacity(64 * 1024);
        }
    }
    socket.shutdown().await
}
