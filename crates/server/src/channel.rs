//! One AMQP channel on the server side: method dispatch, content assembly, publisher
//! confirms and transactions. Delivery state (tags, unacked, prefetch, consumers) lives in
//! the broker; this is what only the connection needs.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use postroom_amqp::constants::{CLASS_BASIC, reply};
use postroom_amqp::method::*;
use postroom_amqp::{BasicProperties, ContentHeader, Frame, Method, ShortStr};
use postroom_core::{
    BrokerError, Destination, ExchangeSpec, Message, QueueSpec, RouteResult, Settlement, TxStep,
};
use postroom_store::{Lsn, Progress};

use postroom_core::Broker;

use crate::connection::Context;
use crate::reply::Close;
use crate::writer::WriterMsg;

/// What the connection should do with the channel after a frame.
pub(crate) enum After {
    Continue,
    /// The channel is fully closed; forget it.
    Remove,
}

/// A channel error or connection error, with the class and method that caused it.
pub(crate) type Fail = (Close, u16, u16);

enum State {
    Open,
    /// The server sent `channel.close` and waits for `close-ok`, dropping other frames.
    Closing,
}

/// A publish whose content is being received.
struct Pending {
    publish: BasicPublish,
    header: Option<ContentHeader>,
    body: BytesMut,
    first_body: Option<Bytes>,
    /// The body bytes received so far, counted in the connection's [`UnfinishedContent`].
    charged: Charge,
}

/// Body bytes of messages a connection has started but not finished, on all its channels:
/// bounded (see [`crate::connection::Context::unfinished_limit`]), so that a client cannot
/// make the broker hold up to `max_message_size` on each of thousands of channels.
#[derive(Debug, Clone, Default)]
pub(crate) struct UnfinishedContent(Arc<AtomicUsize>);

impl UnfinishedContent {
    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// What one unfinished message holds of its connection's [`UnfinishedContent`]; given
/// back when the message is finished or abandoned, however that happens.
struct Charge {
    gauge: UnfinishedContent,
    bytes: usize,
}

impl Charge {
    fn add(&mut self, bytes: usize) {
        self.bytes += bytes;
        self.gauge.0.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.gauge.0.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A reply that waits for the store.
#[derive(Debug, Clone, Copy)]
enum Waiting {
    /// `basic.ack` for this publish sequence number.
    Ack(u64),
    /// `basic.nack` for it: a queue refused the message (`x-overflow` reject-publish).
    Nack(u64),
    /// `tx.commit-ok`.
    CommitOk,
}

/// An operation held back until `tx.commit`.
enum TxOp {
    Publish(Box<(Message, BasicProperties)>, bool),
    Settle(u64, bool, Settlement),
}

pub(crate) struct Channel {
    number: u16,
    state: State,
    pending: Option<Pending>,
    /// Publisher confirms: the sequence number of the last publish, if confirm mode is on.
    confirm: Option<u64>,
    /// Confirms and commit-oks waiting for the store, with the Lsn each waits for.
    waiting: VecDeque<(Lsn, Waiting)>,
    tx: Option<Vec<TxOp>>,
}

fn fail(code: u16, text: impl std::fmt::Display, class_id: u16, method_id: u16) -> Fail {
    (Close::new(code, text), class_id, method_id)
}

impl Channel {
    pub fn new(number: u16) -> Channel {
        Channel {
            number,
            state: State::Open,
            pending: None,
            confirm: None,
            waiting: VecDeque::new(),
            tx: None,
        }
    }

    /// Sends `channel.close` for a channel error and releases the channel's broker state at
    /// once (its unacked messages requeue now, not when the client answers).
    pub fn close_with(
        &mut self,
        ctx: &Context,
        broker: &mut Broker,
        close: Close,
        class_id: u16,
        method_id: u16,
    ) {
        tracing::debug!(channel = self.number, code = close.code, text = %close.text, "closing channel");
        broker.close_channel(ctx.key(self.number));
        self.state = State::Closing;
        self.pending = None;
        ctx.out.method(
            self.number,
            ChannelClose {
                reply_code: close.code,
                reply_text: close.text.into(),
                class_id,
                method_id,
            },
        );
    }

    pub fn handle(
        &mut self,
        ctx: &Context,
        broker: &mut Broker,
        frame: Frame,
    ) -> Result<After, Fail> {
        if let State::Closing = self.state {
            return Ok(match frame {
                Frame::Method { method: Method::ChannelCloseOk(_), .. } => After::Remove,
                Frame::Method { method: Method::ChannelClose(_), .. } => {
                    ctx.out.method(self.number, ChannelCloseOk {});
                    After::Remove
                }
                _ => After::Continue,
            });
        }
        match frame {
            Frame::Method { method, .. } => {
                if self.pending.is_some() {
                    return Err(fail(
                        reply::UNEXPECTED_FRAME,
                        format!(
                            "expected content header for class 60, got non content header frame instead ({})",
                            method.name()
                        ),
                        method.class_id(),
                        method.method_id(),
                    ));
                }
                let (class_id, method_id) = (method.class_id(), method.method_id());
                self.method(ctx, broker, method).map_err(|close| (close, class_id, method_id))
            }
            Frame::Header { header, .. } => self.content_header(ctx, broker, header),
            Frame::Body { payload, .. } => self.content_body(ctx, broker, payload),
            Frame::Heartbeat => Ok(After::Continue),
        }
    }

    fn content_header(
        &mut self,
        ctx: &Context,
        broker: &mut Broker,
        header: ContentHeader,
    ) -> Result<After, Fail> {
        let Some(pending) = self.pending.as_mut().filter(|p| p.header.is_none()) else {
            return Err(fail(reply::UNEXPECTED_FRAME, "unexpected content header", 60, 40));
        };
        if header.class_id != CLASS_BASIC {
            return Err(fail(
                reply::UNEXPECTED_FRAME,
                "content header for a class other than basic",
                60,
                40,
            ));
        }
        let max = ctx.shared.config.max_message_size;
        if header.body_size > max {
            self.pending = None;
            let text = format!(
                "message size {} is larger than configured max size {max}",
                header.body_size
            );
            return Err(fail(reply::PRECONDITION_FAILED, text, 60, 40));
        }
        let size = header.body_size;
        pending.header = Some(header);
        if size == 0 {
            return self.finish_publish(ctx, broker);
        }
        Ok(After::Continue)
    }

    fn content_body(
        &mut self,
        ctx: &Context,
        broker: &mut Broker,
        payload: Bytes,
    ) -> Result<After, Fail> {
        let Some(pending) = self.pending.as_mut() else {
            return Err(fail(reply::UNEXPECTED_FRAME, "unexpected content body", 60, 40));
        };
        let Some(header) = &pending.header else {
            return Err(fail(
                reply::UNEXPECTED_FRAME,
                "content body before content header",
                60,
                40,
            ));
        };
        let expected = header.body_size;
        let received = pending.body.len() + pending.first_body.as_ref().map_or(0, Bytes::len);
        let total = (received + payload.len()) as u64;
        if total > expected {
            return Err(fail(
                reply::FRAME_ERROR,
                "content body exceeds the size in its header",
                60,
                40,
            ));
        }
        if total < expected {
            // Held until the message is complete: bounded per connection.
            pending.charged.add(payload.len());
            let held = pending.charged.gauge.bytes();
            if held > ctx.unfinished_limit {
                let text = format!(
                    "{held} bytes of unfinished messages on this connection, more than the \
                     {} allowed (4 x max_message_size)",
                    ctx.unfinished_limit
                );
                return Err(fail(reply::RESOURCE_ERROR, text, 60, 40));
            }
        }
        // A body in one frame stays a zero-copy slice of the read buffer.
        match pending.first_body.take() {
            None if pending.body.is_empty() => pending.first_body = Some(payload),
            first => {
                if let Some(first) = first {
                    pending.body.extend_from_slice(&first);
                }
                pending.body.extend_from_slice(&payload);
            }
        }
        if total == expected {
            return self.finish_publish(ctx, broker);
        }
        Ok(After::Continue)
    }

    fn finish_publish(&mut self, ctx: &Context, broker: &mut Broker) -> Result<After, Fail> {
        let Some(pending) = self.pending.take() else {
            return Ok(After::Continue);
        };
        let Some(header) = pending.header else {
            return Ok(After::Continue);
        };
        let body = match pending.first_body {
            Some(first) => first,
            None => pending.body.freeze(),
        };
        if let Some(user_id) = &header.properties.user_id
            && *user_id != ctx.user
        {
            let text = format!(
                "user_id property set to '{user_id}' but authenticated user was '{}'",
                ctx.user
            );
            return Err(fail(reply::PRECONDITION_FAILED, text, 60, 40));
        }
        let properties = header.properties;
        let mut message = Message::from_parts(
            pending.publish.exchange,
            pending.publish.routing_key,
            &properties,
            header.raw_properties,
            body,
        );
        // Stamped here, before the store encoding is made, so that it carries the arrival
        // time (TTLs); the broker runs on the same system clock.
        message.stamp_arrival(now_ms());
        let message = compact(message);
        let mandatory = pending.publish.mandatory;
        if let Some(ops) = &mut self.tx {
            ops.push(TxOp::Publish(Box::new((message, properties)), mandatory));
            return Ok(After::Continue);
        }
        let published = self.publish(ctx, broker, message, &properties, mandatory);
        let Some(seq) = self.confirm.as_mut() else {
            published.map_err(|e| (Close::from(e), 60, 40))?;
            return Ok(After::Continue);
        };
        *seq += 1;
        let seq = *seq;
        match published {
            Ok((durable_at, false)) => {
                self.confirm_when(ctx, durable_at.unwrap_or(0), Waiting::Ack(seq))
            }
            Ok((durable_at, true)) => {
                self.confirm_when(ctx, durable_at.unwrap_or(0), Waiting::Nack(seq))
            }
            // The message is not stored: say so, as the confirm contract asks.
            Err(BrokerError::StoreFailed(_)) => {
                self.flush_confirms(ctx, *ctx.progress.borrow())?;
                let nack = BasicNack { delivery_tag: seq, multiple: false, requeue: false };
                ctx.out.method(self.number, nack);
                Ok(After::Continue)
            }
            Err(e) => Err((e.into(), 60, 40)),
        }
    }

    /// Sends `reply` once the store is durable up to `lsn` (at once if it already is),
    /// keeping replies in order.
    fn confirm_when(&mut self, ctx: &Context, lsn: Lsn, reply: Waiting) -> Result<After, Fail> {
        self.waiting.push_back((lsn, reply));
        self.flush_confirms(ctx, *ctx.progress.borrow())?;
        Ok(After::Continue)
    }

    /// Whether confirms or a commit-ok wait for the store.
    pub fn awaits_store(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Sends the confirms (and tx.commit-oks) that `progress` now covers: one
    /// `basic.ack` with `multiple` for a run of them. If the store failed, the rest are
    /// nacked (a commit cannot be honoured: that closes the connection).
    pub fn flush_confirms(&mut self, ctx: &Context, progress: Progress) -> Result<(), Fail> {
        let mut last_ack = None;
        while let Some(&(lsn, reply)) = self.waiting.front() {
            if lsn > progress.durable {
                break;
            }
            self.waiting.pop_front();
            match reply {
                Waiting::Ack(seq) => last_ack = Some(seq),
                Waiting::Nack(seq) => {
                    // Acks before it go first, so that `multiple` never covers the nack.
                    if let Some(acked) = last_ack.take() {
                        ctx.out
                            .method(self.number, BasicAck { delivery_tag: acked, multiple: true });
                    }
                    let nack = BasicNack { delivery_tag: seq, multiple: false, requeue: false };
                    ctx.out.method(self.number, nack);
                }
                Waiting::CommitOk => ctx.out.method(self.number, TxCommitOk {}),
            }
        }
        if let Some(seq) = last_ack {
            ctx.out.method(self.number, BasicAck { delivery_tag: seq, multiple: true });
        }
        if progress.failed {
            for (_, reply) in self.waiting.drain(..) {
                match reply {
                    Waiting::Ack(seq) | Waiting::Nack(seq) => {
                        let nack = BasicNack { delivery_tag: seq, multiple: false, requeue: false };
                        ctx.out.method(self.number, nack);
                    }
                    Waiting::CommitOk => {
                        let text = "the message store failed; the transaction is not durable";
                        return Err(fail(reply::INTERNAL_ERROR, text, 90, 20));
                    }
                }
            }
        }
        Ok(())
    }

    /// Publishes, sending `basic.return` for an unroutable mandatory message, and returns
    /// the store position the publish must wait for, if any, and whether a queue refused it.
    fn publish(
        &mut self,
        ctx: &Context,
        broker: &mut Broker,
        message: Message,
        properties: &BasicProperties,
        mandatory: bool,
    ) -> Result<(Option<Lsn>, bool), BrokerError> {
        let returned = mandatory.then(|| message.clone());
        let published = broker.publish(ctx.key(self.number), message, properties)?;
        if let (RouteResult::Unroutable, Some(message)) = (published.route, returned) {
            let ret = BasicReturn {
                reply_code: reply::NO_ROUTE,
                reply_text: ShortStr::from_static("NO_ROUTE"),
                exchange: message.exchange.clone(),
                routing_key: message.routing_key.clone(),
            };
            ctx.out.send_msg(WriterMsg::Content(self.number, ret.into(), Arc::new(message)));
        }
        Ok((published.durable_at, published.rejected))
    }

    fn settle(
        &mut self,
        ctx: &Context,
        broker: &mut Broker,
        tag: u64,
        multiple: bool,
        how: Settlement,
    ) -> Result<(), BrokerError> {
        if let Some(ops) = &mut self.tx {
            ops.push(TxOp::Settle(tag, multiple, how));
            return Ok(());
        }
        broker.settle(ctx.key(self.number), tag, multiple, how)
    }

    fn method(
        &mut self,
        ctx: &Context,
        broker: &mut Broker,
        method: Method,
    ) -> Result<After, Close> {
        let n = self.number;
        let key = ctx.key(n);
        let out = &ctx.out;
        match method {
            Method::ChannelClose(_) => {
                broker.close_channel(key);
                out.method(n, ChannelCloseOk {});
                return Ok(After::Remove);
            }
            Method::ChannelCloseOk(_) => {}
            Method::ChannelOpen(_) => {
                return Err(Close::new(
                    reply::CHANNEL_ERROR,
                    format!("second 'channel.open' seen on channel {n}"),
                ));
            }
            Method::ChannelFlow(flow) => {
                // Matches RabbitMQ 3.x, which refuses to pause deliveries by channel.flow.
                if !flow.active {
                    return Err(Close::new(reply::NOT_IMPLEMENTED, "active=false"));
                }
                broker.channel_flow(key, flow.active)?;
                out.method(n, ChannelFlowOk { active: flow.active });
            }
            Method::ChannelFlowOk(_) => {}
            Method::AccessRequest(_) => out.method(n, AccessRequestOk { ticket: 1 }),
            Method::ExchangeDeclare(m) => {
                let spec = ExchangeSpec {
                    name: m.exchange,
                    kind: m.kind,
                    passive: m.passive,
                    durable: m.durable,
                    auto_delete: m.auto_delete,
                    internal: m.internal,
                    arguments: m.arguments,
                };
                broker.exchange_declare(ctx.id, spec)?;
                if !m.nowait {
                    out.method(n, ExchangeDeclareOk {});
                }
            }
            Method::ExchangeDelete(m) => {
                broker.exchange_delete(ctx.id, &m.exchange, m.if_unused)?;
                if !m.nowait {
                    out.method(n, ExchangeDeleteOk {});
                }
            }
            Method::ExchangeBind(m) => {
                let destination = Destination::Exchange(m.destination);
                broker.bind(ctx.id, &m.source, destination, m.routing_key, m.arguments)?;
                if !m.nowait {
                    out.method(n, ExchangeBindOk {});
                }
            }
            Method::ExchangeUnbind(m) => {
                let destination = Destination::Exchange(m.destination);
                broker.unbind(ctx.id, &m.source, destination, &m.routing_key, &m.arguments)?;
                if !m.nowait {
                    out.method(n, ExchangeUnbindOk {});
                }
            }
            Method::QueueDeclare(m) => {
                let spec = QueueSpec {
                    name: m.queue,
                    passive: m.passive,
                    durable: m.durable,
                    exclusive: m.exclusive,
                    auto_delete: m.auto_delete,
                    arguments: m.arguments,
                };
                let declared = broker.queue_declare(ctx.id, spec)?;
                if !m.nowait {
                    out.method(
                        n,
                        QueueDeclareOk {
                            queue: declared.name,
                            message_count: declared.message_count,
                            consumer_count: declared.consumer_count,
                        },
                    );
                }
            }
            Method::QueueBind(m) => {
                let destination = Destination::Queue(m.queue);
                broker.bind(ctx.id, &m.exchange, destination, m.routing_key, m.arguments)?;
                if !m.nowait {
                    out.method(n, QueueBindOk {});
                }
            }
            Method::QueueUnbind(m) => {
                let destination = Destination::Queue(m.queue);
                broker.unbind(ctx.id, &m.exchange, destination, &m.routing_key, &m.arguments)?;
                out.method(n, QueueUnbindOk {});
            }
            Method::QueuePurge(m) => {
                let message_count = broker.queue_purge(ctx.id, &m.queue)?;
                if !m.nowait {
                    out.method(n, QueuePurgeOk { message_count });
                }
            }
            Method::QueueDelete(m) => {
                let message_count =
                    broker.queue_delete(ctx.id, &m.queue, m.if_unused, m.if_empty)?;
                if !m.nowait {
                    out.method(n, QueueDeleteOk { message_count });
                }
            }
            Method::BasicQos(m) => {
                if m.prefetch_size != 0 {
                    return Err(Close::new(
                        reply::NOT_IMPLEMENTED,
                        format!("prefetch_size!=0 ({})", m.prefetch_size),
                    ));
                }
                broker.basic_qos(key, m.prefetch_count, m.global)?;
                out.method(n, BasicQosOk {});
            }
            Method::BasicConsume(m) => {
                let nowait = m.nowait;
                broker.basic_consume(
                    key,
                    &m.queue,
                    m.consumer_tag,
                    (m.no_ack, m.exclusive),
                    &m.arguments,
                    |tag| {
                        if !nowait {
                            out.method(n, BasicConsumeOk { consumer_tag: tag.clone() });
                        }
                    },
                )?;
            }
            Method::BasicCancel(m) => {
                broker.basic_cancel(key, &m.consumer_tag)?;
                if !m.nowait {
                    out.method(n, BasicCancelOk { consumer_tag: m.consumer_tag });
                }
            }
            Method::BasicPublish(m) => {
                if m.immediate {
                    return Err(Close::new(reply::NOT_IMPLEMENTED, "immediate=true"));
                }
                self.pending = Some(Pending {
                    publish: m,
                    header: None,
                    body: BytesMut::new(),
                    first_body: None,
                    charged: Charge { gauge: ctx.unfinished.clone(), bytes: 0 },
                });
            }
            Method::BasicGet(m) => match broker.basic_get(key, &m.queue, m.no_ack)? {
                Some(got) => {
                    let ok = BasicGetOk {
                        delivery_tag: got.delivery_tag,
                        redelivered: got.redelivered,
                        exchange: got.message.exchange.clone(),
                        routing_key: got.message.routing_key.clone(),
                        message_count: got.message_count,
                    };
                    out.send_msg(WriterMsg::Content(n, ok.into(), got.message));
                }
                None => out.method(n, BasicGetEmpty { cluster_id: ShortStr::EMPTY }),
            },
            Method::BasicAck(m) => {
                self.settle(ctx, broker, m.delivery_tag, m.multiple, Settlement::Ack)?
            }
            Method::BasicReject(m) => {
                self.settle(ctx, broker, m.delivery_tag, false, requeue_or_discard(m.requeue))?
            }
            Method::BasicNack(m) => {
                self.settle(ctx, broker, m.delivery_tag, m.multiple, requeue_or_discard(m.requeue))?
            }
            Method::BasicRecover(m) => {
                if !m.requeue {
                    return Err(Close::new(reply::NOT_IMPLEMENTED, "requeue=false"));
                }
                // recover-ok goes out before the redeliveries, as RabbitMQ sends it: clients
                // (lapin) drop deliveries that arrive before it.
                out.method(n, BasicRecoverOk {});
                broker.basic_recover(key, m.requeue)?;
            }
            Method::BasicRecoverAsync(m) => broker.basic_recover(key, m.requeue)?,
            Method::ConfirmSelect(m) => {
                if self.tx.is_some() {
                    return Err(Close::new(
                        reply::PRECONDITION_FAILED,
                        "cannot switch from tx to confirm mode",
                    ));
                }
                self.confirm.get_or_insert(0);
                if !m.nowait {
                    out.method(n, ConfirmSelectOk {});
                }
            }
            Method::TxSelect(_) => {
                if self.confirm.is_some() {
                    return Err(Close::new(
                        reply::PRECONDITION_FAILED,
                        "cannot switch from confirm to tx mode",
                    ));
                }
                self.tx.get_or_insert_with(Vec::new);
                out.method(n, TxSelectOk {});
            }
            Method::TxCommit(_) => {
                let Some(ops) = self.tx.replace(Vec::new()) else {
                    return Err(Close::new(
                        reply::PRECONDITION_FAILED,
                        "channel is not transactional",
                    ));
                };
                self.tx = None;
                // All or nothing: a step that would fail closes the channel before any
                // step is applied (RabbitMQ refuses such steps as they arrive).
                let steps = ops.iter().map(|op| match op {
                    TxOp::Publish(publish, _) => TxStep::Publish { exchange: &publish.0.exchange },
                    TxOp::Settle(tag, multiple, _) => {
                        TxStep::Settle { tag: *tag, multiple: *multiple }
                    }
                });
                broker.check_transaction(key, steps)?;
                let mut durable_at = 0;
                let result = ops.into_iter().try_for_each(|op| match op {
                    TxOp::Publish(publish, mandatory) => {
                        let (message, properties) = *publish;
                        let (lsn, _) =
                            self.publish(ctx, broker, message, &properties, mandatory)?;
                        durable_at = durable_at.max(lsn.unwrap_or(0));
                        Ok(())
                    }
                    TxOp::Settle(tag, multiple, how) => {
                        self.settle(ctx, broker, tag, multiple, how)
                    }
                });
                self.tx = Some(Vec::new());
                result.map_err(Close::from)?;
                // As RabbitMQ: commit-ok only once the transaction's messages are durable.
                self.confirm_when(ctx, durable_at, Waiting::CommitOk)
                    .map_err(|(close, ..)| close)?;
            }
            Method::TxRollback(_) => {
                let Some(ops) = &mut self.tx else {
                    return Err(Close::new(
                        reply::PRECONDITION_FAILED,
                        "channel is not transactional",
                    ));
                };
                ops.clear();
                out.method(n, TxRollbackOk {});
            }
            other => {
                return Err(Close::new(
                    reply::COMMAND_INVALID,
                    format!("{} is not valid on channel {n} from a client", other.name()),
                ));
            }
        }
        Ok(After::Continue)
    }
}

/// Bodies up to this size are copied out of the connection's read buffer.
const COMPACT_MAX: usize = 16 * 1024;

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Gives a small message one allocation of its own. Decoded from a frame, its strings,
/// properties and body are slices of the connection's read buffer (64 KiB and up), and a
/// message that waits in a queue would keep that whole buffer alive: a few long-lived small
/// messages could pin megabytes. A body past [`COMPACT_MAX`] is most of the buffer it pins
/// (or was assembled into its own from several frames), so it is left where it is: copying
/// it would cost more than the little memory it saves.
fn compact(message: Message) -> Message {
    if message.body.len() > COMPACT_MAX {
        return message;
    }
    Message::decode(&message.encode().freeze()).unwrap_or(message)
}

fn requeue_or_discard(requeue: bool) -> Settlement {
    if requeue { Settlement::Requeue } else { Settlement::Discard }
}
