//! A connection's writer task: the only code that writes to the socket.
//!
//! Everything a connection sends — method replies from its reader task, deliveries decided
//! by the broker, heartbeats — goes through one unbounded queue, so frames of one channel
//! can never interleave and deliveries leave in the order the broker decided them. The task
//! drains whatever is queued into one buffer and writes it with one syscall, which batches
//! deliveries under load without delaying a lone reply.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::{Bytes, BytesMut};
use postroom_amqp::Method;
use postroom_amqp::frame::{encode_content, encode_heartbeat};
use postroom_amqp::method::BasicDeliver;
use postroom_core::{Message, Outbound, Outlet};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

/// Stop draining the queue into one write past this many buffered bytes.
const MAX_BATCH_BYTES: usize = 256 * 1024;

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

/// The sending side of a connection's writer, given to the broker as its [`Outlet`].
#[derive(Debug, Clone)]
pub struct WriterHandle(pub mpsc::UnboundedSender<WriterMsg>);

impl WriterHandle {
    /// Queues a method frame. A closed writer (the peer went away) drops it.
    pub fn method(&self, channel: u16, method: impl Into<Method>) {
        let _ = self.0.send(WriterMsg::Method(channel, method.into()));
    }

    /// Queues anything.
    pub fn send_msg(&self, msg: WriterMsg) {
        let _ = self.0.send(msg);
    }
}

impl Outlet for WriterHandle {
    fn send(&self, event: Outbound) {
        let _ = self.0.send(WriterMsg::Event(event));
    }
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
/// a write fails. `frame_max` is read per message, as it changes once, at tune-ok.
pub async fn run(
    mut socket: OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<WriterMsg>,
    frame_max: Arc<AtomicU32>,
) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(msg) = queue.recv().await {
        let max = frame_max.load(Ordering::Relaxed);
        encode(msg, max, &mut buf);
        // Let the tasks producing for this connection run once before writing, so that under
        // load one write carries many frames instead of one syscall per frame; when idle this
        // costs one trip through the scheduler.
        if queue.is_empty() {
            tokio::task::yield_now().await;
        }
        while buf.len() < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(msg) => encode(msg, max, &mut buf),
                Err(_) => break,
            }
        }
        socket.write_all(&buf).await?;
        buf.clear();
        if buf.capacity() > 4 * MAX_BATCH_BYTES {
            // One large message must not pin megabytes for the life of the connection.
            buf = BytesMut::with_capacity(64 * 1024);
        }
    }
    socket.shutdown().await
}
