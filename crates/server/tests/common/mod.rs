//! Helpers shared by the end-to-end tests: bounded waits, lapin shortcuts, reply-code
//! extraction, and [`RawClient`], a socket-level AMQP client built on `postroom_amqp` for the
//! frames a well-behaved client such as lapin never sends.
//!
//! Every wait here is bounded by [`WAIT`], so a broker that goes silent fails a test instead
//! of hanging the suite. Each test binary compiles this module on its own and uses only part
//! of it, hence the `dead_code` allowance.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ErrorKind};
use postroom_amqp::constants::PROTOCOL_HEADER;
use postroom_amqp::frame::{self, encode_body_frame, encode_header};
use postroom_amqp::method::{
    BasicPublish, ChannelOpen, ChannelOpenOk, ConnectionClose, ConnectionCloseOk, ConnectionOpen,
    ConnectionOpenOk, ConnectionStart, ConnectionStartOk, ConnectionTune, ConnectionTuneOk,
};
use postroom_amqp::{DecodeError, Frame, LongStr, Method, ShortStr};
use postroom_testkit::TestBroker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest any single step of a test may take.
pub const WAIT: Duration = Duration::from_secs(5);

/// How long a test watches for something that must *not* happen (an extra delivery).
pub const QUIET: Duration = Duration::from_millis(300);

/// Awaits `future`, failing the test if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// A lapin connection to the broker's default vhost as guest.
pub async fn connect(broker: &TestBroker) -> Connection {
    connect_url(&broker.url()).await
}

/// A lapin connection to `url`.
pub async fn connect_url(url: &str) -> Connection {
    within("lapin connect", Connection::connect(url, ConnectionProperties::default()))
        .await
        .expect("connection opens")
}

/// A new channel on `conn`.
pub async fn channel(conn: &Connection) -> Channel {
    within("channel.open", conn.create_channel()).await.expect("channel opens")
}

/// The AMQP reply code carried by a lapin error, if the broker sent one.
pub fn reply_code(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// Asserts that `result` failed with the broker's reply `code`.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(result: lapin::Result<T>, code: u16) {
    match result {
        Ok(value) => panic!("expected a close with {code}, got success: {value:?}"),
        Err(error) => assert_eq!(
            reply_code(&error),
            Some(code),
            "expected reply code {code}, got error {error}"
        ),
    }
}

/// Declares a plain (non-durable, non-exclusive) queue.
pub async fn declare_queue(ch: &Channel, name: &str) -> lapin::Queue {
    within(
        "queue.declare",
        ch.queue_declare(name.into(), QueueDeclareOptions::default(), FieldTable::default()),
    )
    .await
    .expect("queue declared")
}

/// Ready messages in `queue`, by a passive declare.
pub async fn message_count(ch: &Channel, queue: &str) -> u32 {
    let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    within("passive queue.declare", ch.queue_declare(queue.into(), options, FieldTable::default()))
        .await
        .expect("queue exists")
        .message_count()
}

/// Publishes `body` without waiting for a confirm.
pub async fn publish(ch: &Channel, exchange: &str, routing_key: &str, body: &[u8]) {
    publish_with(ch, exchange, routing_key, body, BasicProperties::default()).await;
}

/// Publishes `body` with `properties` without waiting for a confirm.
pub async fn publish_with(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    within(
        "basic.publish",
        ch.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        ),
    )
    .await
    .expect("publish sent");
}

/// Starts a consumer on `queue` with the given options and a generated tag.
pub async fn consume(ch: &Channel, queue: &str, options: BasicConsumeOptions) -> Consumer {
    within(
        "basic.consume",
        ch.basic_consume(queue.into(), "".into(), options, FieldTable::default()),
    )
    .await
    .expect("consumer starts")
}

/// The next delivery of `consumer`.
pub async fn next_delivery(consumer: &mut Consumer) -> Delivery {
    within("a delivery", consumer.next())
        .await
        .expect("consumer stream ended")
        .expect("delivery without error")
}

/// Asserts that `consumer` receives nothing for [`QUIET`].
pub async fn assert_no_delivery(consumer: &mut Consumer) {
    if let Ok(item) = tokio::time::timeout(QUIET, consumer.next()).await {
        let what = item.map(|result| result.map(|d| d.data));
        panic!("expected no delivery, got {what:?}");
    }
}

/// A consumer on a fresh exclusive queue of `ch`, there to observe the channel being closed
/// by the broker: lapin hands the close to the channel's consumers, whereas a method sent
/// after the close has arrived only sees "invalid channel state".
pub async fn close_watcher(ch: &Channel) -> Consumer {
    let options = QueueDeclareOptions { exclusive: true, ..QueueDeclareOptions::default() };
    let queue =
        within("queue.declare", ch.queue_declare("".into(), options, FieldTable::default()))
            .await
            .expect("watcher queue declared");
    consume(ch, queue.name().as_str(), BasicConsumeOptions::default()).await
}

/// Waits for the broker to close the channel watched by `watcher` ([`close_watcher`]) and
/// returns the reply code of the close.
pub async fn channel_closed_with(watcher: &mut Consumer) -> u16 {
    match within("the broker to close the channel", watcher.next()).await {
        Some(Err(error)) => {
            reply_code(&error).unwrap_or_else(|| panic!("close without a reply code: {error}"))
        }
        other => panic!("expected the channel to be closed, got {other:?}"),
    }
}

/// Takes one message from `queue` with `basic.get` (no_ack), returning its body.
pub async fn get_body(ch: &Channel, queue: &str) -> Option<Vec<u8>> {
    within("basic.get", ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
        .await
        .expect("basic.get answered")
        .map(|message| message.delivery.data)
}

/// A socket-level AMQP 0-9-1 client that sends exactly the bytes a test asks for.
pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    /// The frame_max agreed in the handshake (0 before it).
    pub frame_max: u32,
}

/// What the broker sent in its `connection.start`.
pub struct Handshake {
    /// The `connection.start` method.
    pub start: ConnectionStart,
    /// The `connection.tune` method.
    pub tune: ConnectionTune,
}

impl RawClient {
    /// Opens a TCP connection and does nothing else.
    pub async fn tcp(addr: SocketAddr) -> RawClient {
        let stream = within("TCP connect", TcpStream::connect(addr)).await.expect("TCP connect");
        RawClient::over(stream)
    }

    fn over(stream: TcpStream) -> RawClient {
        stream.set_nodelay(true).expect("nodelay");
        RawClient { stream, buf: BytesMut::with_capacity(64 * 1024), frame_max: 0 }
    }

    /// Like [`RawClient::open`], over a socket whose receive buffer is fixed at `bytes`
    /// (no autotuning), so that what the broker can push before the client reads is small
    /// and known.
    pub async fn open_with_receive_buffer(addr: SocketAddr, bytes: u32) -> RawClient {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        let stream = within("TCP connect", socket.connect(addr)).await.expect("TCP connect");
        let (mut client, _) = RawClient::over(stream).logged_in(0, 0).await;
        client.open_vhost("/").await;
        client.open_channel(1).await;
        client
    }

    /// Like [`RawClient::open`], announcing `capabilities` in the client properties (as
    /// `capabilities.<name> = true`).
    pub async fn open_announcing(addr: SocketAddr, capabilities: &[&str]) -> RawClient {
        let (mut client, _) = RawClient::tcp(addr).await.started().await;
        let mut announced = postroom_amqp::FieldTable::new();
        for capability in capabilities {
            announced.insert(*capability, postroom_amqp::FieldValue::Bool(true));
        }
        let mut properties = postroom_amqp::FieldTable::new();
        properties.insert("capabilities", postroom_amqp::FieldValue::Table(announced));
        client.send_start_ok_with("guest", properties).await;
        let tune = match client.recv_method_on(0).await {
            Method::ConnectionTune(tune) => tune,
            other => panic!("expected connection.tune, got {other:?}"),
        };
        let tune_ok = ConnectionTuneOk {
            channel_max: tune.channel_max,
            frame_max: tune.frame_max,
            heartbeat: 0,
        };
        client.send_method(0, tune_ok).await;
        client.frame_max = tune.frame_max;
        client.open_vhost("/").await;
        client.open_channel(1).await;
        client
    }

    /// Writes `bytes` unless that takes longer than `limit`; whether it did.
    pub async fn write_within(&mut self, bytes: &[u8], limit: Duration) -> bool {
        matches!(tokio::time::timeout(limit, self.stream.write_all(bytes)).await, Ok(Ok(())))
    }

    /// Connects, logs in as guest, opens vhost `/` and channel 1.
    pub async fn open(addr: SocketAddr) -> RawClient {
        let (mut client, _) = RawClient::login(addr, 0).await;
        client.open_vhost("/").await;
        client.open_channel(1).await;
        client
    }

    /// Connects and completes start/tune, proposing `frame_max` (0 takes the broker's) and
    /// no heartbeats.
    pub async fn login(addr: SocketAddr, frame_max: u32) -> (RawClient, Handshake) {
        RawClient::login_with(addr, frame_max, 0).await
    }

    /// Connects, sends the protocol header and reads `connection.start`.
    pub async fn start(addr: SocketAddr) -> (RawClient, ConnectionStart) {
        RawClient::tcp(addr).await.started().await
    }

    async fn started(mut self) -> (RawClient, ConnectionStart) {
        self.send_raw(&PROTOCOL_HEADER).await;
        match self.recv_method_on(0).await {
            Method::ConnectionStart(start) => (self, start),
            other => panic!("expected connection.start, got {other:?}"),
        }
    }

    /// Sends `connection.start-ok` with PLAIN credentials for guest and `password`.
    pub async fn send_start_ok(&mut self, password: &str) {
        self.send_start_ok_with(password, Default::default()).await;
    }

    /// Sends `connection.start-ok` with `client_properties`.
    pub async fn send_start_ok_with(
        &mut self,
        password: &str,
        client_properties: postroom_amqp::FieldTable,
    ) {
        self.send_method(
            0,
            ConnectionStartOk {
                client_properties,
                mechanism: ShortStr::from("PLAIN"),
                response: LongStr::from(format!("\0guest\0{password}").as_str()),
                locale: ShortStr::from("en_US"),
            },
        )
        .await;
    }

    /// Connects and completes start/tune, answering tune with `frame_max` (0 takes the
    /// broker's) and `heartbeat`.
    pub async fn login_with(
        addr: SocketAddr,
        frame_max: u32,
        heartbeat: u16,
    ) -> (RawClient, Handshake) {
        RawClient::tcp(addr).await.logged_in(frame_max, heartbeat).await
    }

    async fn logged_in(self, frame_max: u32, heartbeat: u16) -> (RawClient, Handshake) {
        let (mut client, start) = self.started().await;
        client.send_start_ok("guest").await;
        let tune = match client.recv_method_on(0).await {
            Method::ConnectionTune(tune) => tune,
            other => panic!("expected connection.tune, got {other:?}"),
        };
        let agreed = if frame_max == 0 { tune.frame_max } else { frame_max };
        client
            .send_method(
                0,
                ConnectionTuneOk { channel_max: tune.channel_max, frame_max: agreed, heartbeat },
            )
            .await;
        client.frame_max = agreed;
        (client, Handshake { start, tune })
    }

    /// Sends `connection.open` for `vhost` and waits for open-ok.
    pub async fn open_vhost(&mut self, vhost: &str) {
        self.send_method(0, ConnectionOpen { virtual_host: vhost.into(), ..Default::default() })
            .await;
        match self.recv_method_on(0).await {
            Method::ConnectionOpenOk(ConnectionOpenOk { .. }) => {}
            other => panic!("expected connection.open-ok, got {other:?}"),
        }
    }

    /// Opens channel `number` and waits for open-ok.
    pub async fn open_channel(&mut self, number: u16) {
        self.send_method(number, ChannelOpen::default()).await;
        match self.recv_method_on(number).await {
            Method::ChannelOpenOk(ChannelOpenOk { .. }) => {}
            other => panic!("expected channel.open-ok on {number}, got {other:?}"),
        }
    }

    /// Writes `bytes` as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        within("socket write", self.stream.write_all(bytes)).await.expect("socket write");
    }

    /// Sends one method frame.
    pub async fn send_method(&mut self, channel: u16, method: impl Into<Method>) {
        let mut buf = BytesMut::new();
        method.into().encode_frame(channel, &mut buf);
        self.send_raw(&buf).await;
    }

    /// The bytes of a whole `basic.publish` (method, header, one body frame).
    pub fn publish_bytes(channel: u16, exchange: &str, routing_key: &str, body: &[u8]) -> Bytes {
        let mut buf = BytesMut::new();
        Method::from(BasicPublish {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            ..Default::default()
        })
        .encode_frame(channel, &mut buf);
        // Properties: an empty flags word.
        encode_header(channel, 60, body.len() as u64, &[0, 0], &mut buf);
        if !body.is_empty() {
            encode_body_frame(channel, body, &mut buf);
        }
        buf.freeze()
    }

    /// Reads the next frame; `None` when the broker closed the socket.
    pub async fn recv(&mut self) -> Option<Frame> {
        within("a frame from the broker", self.recv_unbounded()).await
    }

    async fn recv_unbounded(&mut self) -> Option<Frame> {
        loop {
            match frame::check(&self.buf, 0) {
                Ok(len) => {
                    let bytes = self.buf.split_to(len).freeze();
                    return Some(Frame::parse(bytes).expect("broker sent a valid frame"));
                }
                Err(DecodeError::Incomplete) => {}
                Err(e) => panic!("broker sent a bad frame: {e}"),
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads the next method frame, skipping heartbeats, and returns it with its channel.
    pub async fn recv_method(&mut self) -> (u16, Method) {
        loop {
            match self.recv().await {
                Some(Frame::Heartbeat) => continue,
                Some(Frame::Method { channel, method }) => return (channel, method),
                Some(other) => panic!("expected a method frame, got {other:?}"),
                None => panic!("broker closed the socket while a method was expected"),
            }
        }
    }

    /// Reads the next method frame and checks that it is on `channel`.
    pub async fn recv_method_on(&mut self, channel: u16) -> Method {
        let (got, method) = self.recv_method().await;
        assert_eq!(got, channel, "{} arrived on the wrong channel", method.name());
        method
    }

    /// Reads until the broker sends `connection.close` (skipping anything else), answers
    /// close-ok, and checks the socket then closes. Returns the close.
    pub async fn expect_connection_close(&mut self) -> ConnectionClose {
        let close = loop {
            match self.recv().await {
                Some(Frame::Method { channel: 0, method: Method::ConnectionClose(close) }) => {
                    break close;
                }
                Some(_) => continue,
                None => panic!("socket closed without connection.close"),
            }
        };
        self.send_method(0, ConnectionCloseOk {}).await;
        self.expect_eof().await;
        close
    }

    /// Reads (and drops) frames until the broker closes the socket.
    pub async fn expect_eof(&mut self) {
        while self.recv().await.is_some() {}
    }

    /// Reads bytes until the broker closes the socket, returning everything read.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut all = self.buf.split().to_vec();
        within("the broker to close the socket", async {
            let _ = self.stream.read_to_end(&mut all).await;
        })
        .await;
        all
    }

    /// Drops the socket at once.
    pub fn disconnect(self) {
        drop(self.stream);
    }
}
