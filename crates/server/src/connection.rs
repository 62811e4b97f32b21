//! One client connection: the handshake, the frame loop, heartbeats and clean-up.
//!
//! The reader task (this module) owns the connection's channels and is the only one to touch
//! them; the writer task ([`crate::writer`]) owns the socket's write half. A protocol error
//! closes this connection only; the broker is told when the connection goes, however it
//! goes (close, error, EOF, heartbeat timeout), so its unacked messages are requeued and
//! its exclusive queues deleted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use postroom_amqp::constants::{FRAME_MIN_SIZE, PROTOCOL_HEADER, reply};
use postroom_amqp::frame::{self, check_protocol_header};
use postroom_amqp::method::*;
use postroom_amqp::{DecodeError, FieldTable, FieldValue, Frame, LongStr, Method, ShortStr};
use postroom_core::{Broker, ChannelKey, ConnectionId};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::watch;

use crate::Shared;
use crate::auth;
use crate::channel::{Channel, UnfinishedContent};
use crate::reply::{Close, Scope};
use crate::writer::{self, WriterHandle, WriterMsg};

/// How long shutdown waits for the journal to cover confirms still outstanding.
const SHUTDOWN_CONFIRM_WAIT: Duration = Duration::from_secs(5);

/// How long to wait for `connection.close-ok` after the server closes a connection.
const CLOSE_OK_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the frame loop ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The peer went away or a read failed.
    Gone,
    /// The client closed the connection (close-ok already sent).
    ClosedByClient,
    /// The server must close the connection with this error.
    Close(Close, u16, u16),
}

impl From<std::io::Error> for End {
    fn from(_: std::io::Error) -> End {
        End::Gone
    }
}

/// Connection-wide values negotiated in the handshake, shared with its channels.
pub(crate) struct Context {
    pub shared: Arc<Shared>,
    pub out: WriterHandle,
    pub id: ConnectionId,
    pub user: ShortStr,
    /// The store's durability progress, read when a confirm may be due.
    pub progress: watch::Receiver<postroom_store::Progress>,
    /// Body bytes of messages started but not finished on this connection's channels.
    pub unfinished: UnfinishedContent,
    /// The most `unfinished` may hold before the connection is closed with
    /// `RESOURCE_ERROR` (506): four messages of `max_message_size`.
    pub unfinished_limit: usize,
}

impl Context {
    pub fn key(&self, channel: u16) -> ChannelKey {
        ChannelKey { connection: self.id, channel }
    }
}

struct Reader {
    socket: OwnedReadHalf,
    buf: BytesMut,
    frame_max: u32,
    /// Close the connection if nothing arrives for this long (twice the heartbeat).
    idle_timeout: Option<Duration>,
    /// When bytes last arrived.
    last_read: tokio::time::Instant,
}

impl Reader {
    async fn fill(&mut self) -> Result<(), End> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(64 * 1024);
        }
        let n = self.socket.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(End::Gone);
        }
        self.last_read = tokio::time::Instant::now();
        Ok(())
    }

    /// When the peer counts as dead if nothing more arrives (never without heartbeats).
    /// A deadline rather than a timeout around each read: the frame loop also wakes for
    /// other reasons (confirms), and each wake must not restart the peer's allowance.
    fn dead_at(&self) -> Option<tokio::time::Instant> {
        self.idle_timeout.map(|limit| self.last_read + limit)
    }

    /// Reads the next frame. Cancellation-safe: bytes read stay buffered.
    async fn frame(&mut self) -> Result<Frame, End> {
        loop {
            match self.buffered_frame()? {
                Some(frame) => return Ok(frame),
                None => self.fill().await?,
            }
        }
    }

    /// The next frame if it is whole in the buffer already.
    fn buffered_frame(&mut self) -> Result<Option<Frame>, End> {
        match frame::check(&self.buf, self.frame_max) {
            Ok(len) => {
                let bytes = self.buf.split_to(len).freeze();
                Frame::parse(bytes).map(Some).map_err(decode_close)
            }
            Err(DecodeError::Incomplete) => Ok(None),
            Err(e) => Err(decode_close(e)),
        }
    }

    async fn method(&mut self) -> Result<Method, End> {
        loop {
            match self.frame().await? {
                Frame::Heartbeat => continue,
                Frame::Method { channel: 0, method } => return Ok(method),
                _ => {
                    return Err(End::Close(
                        Close::new(reply::COMMAND_INVALID, "expected a connection method"),
                        0,
                        0,
                    ));
                }
            }
        }
    }
}

fn decode_close(error: DecodeError) -> End {
    let (class_id, method_id) = match error {
        DecodeError::UnknownMethod { class_id, method_id } => (class_id, method_id),
        _ => (0, 0),
    };
    End::Close(Close::new(error.reply_code(), error), class_id, method_id)
}

fn server_properties() -> FieldTable {
    let mut capabilities = FieldTable::new();
    for name in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        capabilities.insert(name, true);
    }
    let mut props = FieldTable::new();
    props.insert("product", "Postroom");
    props.insert("version", env!("CARGO_PKG_VERSION"));
    props.insert("platform", "Rust");
    props.insert("copyright", "Postroom developers");
    props.insert("information", "AMQP 0-9-1 broker with native Enterprise Integration Patterns");
    props.insert("capabilities", FieldValue::Table(capabilities));
    props
}

/// Serves one accepted socket to the end.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    socket: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    let _ = socket.set_nodelay(true);
    let (read, write) = socket.into_split();
    let (out, rx, pressure) = writer::channel();
    let frame_max = Arc::new(AtomicU32::new(shared.config.frame_max));
    let writer = tokio::spawn(writer::run(write, rx, frame_max.clone(), pressure));
    let mut reader = Reader {
        socket: read,
        buf: BytesMut::with_capacity(64 * 1024),
        frame_max: shared.config.frame_max,
        idle_timeout: None,
        last_read: tokio::time::Instant::now(),
    };
    let mut id = None;
    let end = run(&shared, &out, &mut reader, peer, &frame_max, &mut id, shutdown).await;
    if let End::ClosedByClient = end {
        // The client closes the socket once it has read close-ok, as with RabbitMQ; closing
        // ours first can reach it before it processed close-ok (lapin then reports the
        // connection aborted). Its unacked messages are requeued meanwhile.
        if let Some(id) = id.take() {
            shared.lock().close_connection(id);
        }
        let _ =
            tokio::time::timeout(CLOSE_OK_TIMEOUT, async { while reader.frame().await.is_ok() {} })
                .await;
    }
    if let End::Close(close, class_id, method_id) = end {
        tracing::info!(%peer, code = close.code, text = %close.text, "closing connection");
        out.method(
            0,
            ConnectionClose {
                reply_code: close.code,
                reply_text: close.text.into(),
                class_id,
                method_id,
            },
        );
        // Wait briefly for close-ok so the client reads the close before the socket goes.
        let _ = tokio::time::timeout(CLOSE_OK_TIMEOUT, async {
            loop {
                match reader.frame().await {
                    Ok(Frame::Method { method: Method::ConnectionCloseOk(_), .. }) | Err(_) => {
                        break;
                    }
                    Ok(_) => continue,
                }
            }
        })
        .await;
    }
    if let Some(id) = id {
        shared.lock().close_connection(id);
    }
    drop(out);
    let _ = tokio::time::timeout(CLOSE_OK_TIMEOUT, writer).await;
}

async fn run(
    shared: &Arc<Shared>,
    out: &WriterHandle,
    reader: &mut Reader,
    peer: SocketAddr,
    frame_max_shared: &AtomicU32,
    id_slot: &mut Option<ConnectionId>,
    mut shutdown: watch::Receiver<bool>,
) -> End {
    let config = &shared.config;
    let handshake = async {
        loop {
            match check_protocol_header(&reader.buf) {
                Ok(()) => break,
                Err(DecodeError::Incomplete) => reader.fill().await?,
                Err(_) => {
                    // Spec 4.2.2: answer a bad header with ours, then close.
                    out.send_msg(WriterMsg::Raw(bytes::Bytes::from_static(&PROTOCOL_HEADER)));
                    return Err(End::Gone);
                }
            }
        }
        let _ = reader.buf.split_to(PROTOCOL_HEADER.len());
        out.method(
            0,
            ConnectionStart {
                version_major: 0,
                version_minor: 9,
                server_properties: server_properties(),
                mechanisms: LongStr::from(auth::MECHANISMS),
                locales: LongStr::from("en_US"),
            },
        );
        let Method::ConnectionStartOk(start_ok) = reader.method().await? else {
            return Err(End::Close(
                Close::new(reply::COMMAND_INVALID, "expected connection.start-ok"),
                10,
                11,
            ));
        };
        let wants_blocked_notice =
            announces_capability(&start_ok.client_properties, "connection.blocked");
        let creds = auth::credentials(&start_ok.mechanism, start_ok.response.as_bytes());
        let user = match creds {
            Some((user, password))
                if auth::authenticate(&config.users, &user, &password, peer.ip()) =>
            {
                user
            }
            _ => {
                let text = format!(
                    "Login was refused using authentication mechanism {}. For details see the broker logfile.",
                    start_ok.mechanism
                );
                tracing::warn!(%peer, "authentication failed");
                return Err(End::Close(Close::new(reply::ACCESS_REFUSED, text), 10, 11));
            }
        };
        out.method(
            0,
            ConnectionTune {
                channel_max: config.channel_max,
                frame_max: config.frame_max,
                heartbeat: config.heartbeat,
            },
        );
        let Method::ConnectionTuneOk(tune) = reader.method().await? else {
            return Err(End::Close(
                Close::new(reply::COMMAND_INVALID, "expected connection.tune-ok"),
                10,
                31,
            ));
        };
        let frame_max = match tune.frame_max {
            0 => config.frame_max,
            n if n < FRAME_MIN_SIZE => {
                let text = format!(
                    "negotiated frame_max = {n} is lower than the minimum allowed value ({FRAME_MIN_SIZE})"
                );
                return Err(End::Close(Close::new(reply::NOT_ALLOWED, text), 10, 31));
            }
            n if n > config.frame_max => {
                let text = format!(
                    "negotiated frame_max = {n} is higher than the maximum allowed value ({})",
                    config.frame_max
                );
                return Err(End::Close(Close::new(reply::NOT_ALLOWED, text), 10, 31));
            }
            n => n,
        };
        let channel_max = match tune.channel_max {
            0 => config.channel_max,
            n if n > config.channel_max => {
                let text = format!(
                    "negotiated channel_max = {n} is higher than the maximum allowed value ({})",
                    config.channel_max
                );
                return Err(End::Close(Close::new(reply::NOT_ALLOWED, text), 10, 31));
            }
            n => n,
        };
        Ok::<_, End>((user, frame_max, channel_max, tune.heartbeat, wants_blocked_notice))
    };
    let (user, frame_max, channel_max, heartbeat, wants_blocked_notice) =
        match tokio::time::timeout(config.handshake_timeout, handshake).await {
            Ok(Ok(values)) => values,
            Ok(Err(end)) => return end,
            Err(_) => return End::Gone,
        };
    reader.frame_max = frame_max;
    frame_max_shared.store(frame_max, Ordering::Relaxed);
    if heartbeat > 0 {
        let interval = Duration::from_secs(heartbeat.into());
        reader.idle_timeout = Some(interval * 2);
        spawn_heartbeats(out, interval / 2);
    }
    let open = match reader.method().await {
        Ok(Method::ConnectionOpen(open)) => open,
        Ok(_) => {
            return End::Close(
                Close::new(reply::COMMAND_INVALID, "expected connection.open"),
                10,
                40,
            );
        }
        Err(end) => return end,
    };
    if !auth::may_open(&config.users, &user, &open.virtual_host) {
        // As RabbitMQ words it.
        let text = format!("access to vhost '{}' refused for user '{user}'", open.virtual_host);
        tracing::warn!(%peer, %text, "vhost refused");
        return End::Close(Close::new(reply::NOT_ALLOWED, text), 10, 40);
    }
    let opened = shared.lock().open_connection(&open.virtual_host, &user, Arc::new(out.clone()));
    let id = match opened {
        Ok(id) => id,
        Err(e) => return End::Close(Close::from_error(&e), 10, 40),
    };
    *id_slot = Some(id);
    out.method(0, ConnectionOpenOk { known_hosts: ShortStr::EMPTY });
    tracing::debug!(%peer, id, "connection open");
    let ctx = Context {
        shared: shared.clone(),
        out: out.clone(),
        id,
        user: user.into(),
        progress: shared.store.progress(),
        unfinished: UnfinishedContent::default(),
        unfinished_limit: usize::try_from(config.max_message_size)
            .unwrap_or(usize::MAX)
            .saturating_mul(4),
    };
    let mut progress = shared.store.progress();
    let mut progress_live = true;
    let mut channels: HashMap<u16, Channel> = HashMap::new();
    let mut alarm = shared.alarms.subscribe();
    let mut alarm_live = true;
    // Whether the connection has published: only publishers are blocked by an alarm.
    let mut published = false;
    let mut blocked = false;
    loop {
        // A publisher is not read while a resource alarm is on (RabbitMQ's
        // connection.blocked), and told so if it announced the capability.
        let alarmed = published && alarm.borrow().is_some();
        if alarmed != blocked {
            blocked = alarmed;
            if blocked {
                reader.last_read = tokio::time::Instant::now();
            }
            if wants_blocked_notice {
                match alarm.borrow().as_deref() {
                    Some(reason) if blocked => {
                        out.method(0, ConnectionBlocked { reason: ShortStr::from(reason) });
                    }
                    _ => out.method(0, ConnectionUnblocked {}),
                }
            }
        }
        // A client that sends but does not read (the writer's queue is full of what it was
        // sent) is not read either until the writer catches up: TCP pushes back on it.
        // Its silence meanwhile is ours, so it does not count against its heartbeats.
        let paused = blocked || !out.pressure().below(writer::READ_HIGH_WATER);
        let dead_at = reader.dead_at().filter(|_| !paused);
        let frame = tokio::select! {
            frame = reader.frame(), if !paused => frame,
            () = out.pressure().drained() => {
                if paused {
                    reader.last_read = tokio::time::Instant::now();
                }
                shared.lock().dispatch_connection(id);
                continue;
            }
            changed = alarm.changed(), if alarm_live => {
                alarm_live = changed.is_ok();
                if blocked {
                    reader.last_read = tokio::time::Instant::now();
                }
                continue;
            }
            changed = progress.changed(), if progress_live => {
                if changed.is_err() {
                    // The store is gone (shutdown): no more confirms will come from it.
                    progress_live = false;
                    continue;
                }
                let now = *progress.borrow_and_update();
                for channel in channels.values_mut() {
                    if let Err((close, class_id, method_id)) = channel.flush_confirms(&ctx, now) {
                        return End::Close(close, class_id, method_id);
                    }
                }
                continue;
            }
            _ = sleep_until_dead(dead_at) => {
                // Bytes of a frame not yet whole may have arrived meanwhile.
                if reader.dead_at().is_some_and(|at| at > tokio::time::Instant::now()) {
                    continue;
                }
                tracing::warn!("missed heartbeats from client, closing connection");
                return End::Gone;
            }
            _ = shutdown.changed() => {
                // Confirms still waiting for the journal go out first (the store keeps
                // syncing until every connection is gone), within a bound.
                let deadline = tokio::time::Instant::now() + SHUTDOWN_CONFIRM_WAIT;
                while progress_live && channels.values().any(Channel::awaits_store) {
                    match tokio::time::timeout_at(deadline, progress.changed()).await {
                        Ok(Ok(())) => {
                            let now = *progress.borrow_and_update();
                            for channel in channels.values_mut() {
                                let _ = channel.flush_confirms(&ctx, now);
                            }
                        }
                        _ => break,
                    }
                }
                let close = Close::new(reply::CONNECTION_FORCED, "broker forced connection closure with reason 'shutdown'");
                return End::Close(close, 0, 0);
            }
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(end) => return end,
        };
        // The frames that one read brought in are handled back to back under one lock of
        // the broker: going through the select above for each would register (and drop)
        // its wake-ups and timer every time, and taking the lock for each would hand it
        // back and forth with other connections' tasks (a futex wake and sleep each time).
        // At most FRAMES_PER_LOCK, so that other connections wait briefly.
        let mut broker = shared.lock();
        let mut next = Some(frame);
        let mut handled = 0;
        while let Some(frame) = next.take() {
            published |= matches!(frame, Frame::Method { method: Method::BasicPublish(_), .. });
            if let Err(end) = handle_frame(&ctx, &mut broker, &mut channels, channel_max, frame) {
                return end;
            }
            handled += 1;
            if handled == FRAMES_PER_LOCK || !out.pressure().below(writer::READ_HIGH_WATER) {
                break;
            }
            next = match reader.buffered_frame() {
                Ok(frame) => frame,
                Err(end) => return end,
            };
        }
    }
}

/// The most frames a connection handles under one lock of the broker.
const FRAMES_PER_LOCK: usize = 256;

/// Whether `client_properties` announce `capability` (`capabilities.<name> = true`).
fn announces_capability(client_properties: &FieldTable, capability: &str) -> bool {
    match client_properties.get("capabilities") {
        Some(FieldValue::Table(capabilities)) => {
            capabilities.get(capability).and_then(FieldValue::as_bool).unwrap_or(false)
        }
        _ => false,
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_dead(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Sends a heartbeat every `every` until the connection's writer goes away. Holds only a
/// weak sender so that it never keeps the writer alive.
fn spawn_heartbeats(out: &WriterHandle, every: Duration) {
    let weak = out.downgrade();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(500)));
        tick.tick().await;
        loop {
            tick.tick().await;
            match weak.upgrade() {
                Some(tx) if tx.send(WriterMsg::Heartbeat).is_ok() => {}
                _ => break,
            }
        }
    });
}

fn handle_frame(
    ctx: &Context,
    broker: &mut Broker,
    channels: &mut HashMap<u16, Channel>,
    channel_max: u16,
    frame: Frame,
) -> Result<(), End> {
    let number = match &frame {
        Frame::Heartbeat => return Ok(()),
        Frame::Method { channel, .. }
        | Frame::Header { channel, .. }
        | Frame::Body { channel, .. } => *channel,
    };
    if number == 0 {
        return match frame {
            Frame::Method { method: Method::ConnectionClose(_), .. } => {
                ctx.out.method(0, ConnectionCloseOk {});
                Err(End::ClosedByClient)
            }
            Frame::Method { method: Method::ConnectionUpdateSecret(_), .. } => {
                ctx.out.method(0, ConnectionUpdateSecretOk {});
                Ok(())
            }
            Frame::Method {
                method: Method::ConnectionBlocked(_) | Method::ConnectionUnblocked(_),
                ..
            } => Ok(()),
            Frame::Method { method, .. } => Err(End::Close(
                Close::new(
                    reply::COMMAND_INVALID,
                    format!("unexpected {} on channel 0", method.name()),
                ),
                method.class_id(),
                method.method_id(),
            )),
            _ => Err(End::Close(
                Close::new(reply::UNEXPECTED_FRAME, "content frame on channel 0"),
                0,
                0,
            )),
        };
    }
    match channels.get_mut(&number) {
        Some(channel) => {
            let outcome = channel.handle(ctx, broker, frame);
            match outcome {
                Ok(crate::channel::After::Continue) => Ok(()),
                Ok(crate::channel::After::Remove) => {
                    channels.remove(&number);
                    Ok(())
                }
                Err((close, class_id, method_id)) => match close.scope {
                    Scope::Connection => Err(End::Close(close, class_id, method_id)),
                    Scope::Channel => {
                        channel.close_with(ctx, broker, close, class_id, method_id);
                        Ok(())
                    }
                },
            }
        }
        None => match frame {
            Frame::Method { method: Method::ChannelOpen(_), .. } => {
                // Matches RabbitMQ: the limit is on the number of open channels.
                if channels.len() >= usize::from(channel_max) {
                    let text = format!(
                        "number of channels opened ({}) has reached the negotiated channel_max ({channel_max})",
                        channels.len()
                    );
                    return Err(End::Close(Close::new(reply::NOT_ALLOWED, text), 20, 10));
                }
                broker.open_channel(ctx.key(number)).map_err(|e| End::Close(e.into(), 20, 10))?;
                channels.insert(number, Channel::new(number));
                ctx.out.method(number, ChannelOpenOk { channel_id: LongStr::default() });
                Ok(())
            }
            // A close-ok for a channel we already forgot, or frames racing our close: ignore.
            Frame::Method { method: Method::ChannelCloseOk(_), .. } => Ok(()),
            Frame::Method { method: Method::ChannelClose(_), .. } => {
                ctx.out.method(number, ChannelCloseOk {});
                Ok(())
            }
            _ => Err(End::Close(
                Close::new(
                    reply::CHANNEL_ERROR,
                    format!("expected 'channel.open' on channel {number}"),
                ),
                0,
                0,
            )),
        },
    }
}
