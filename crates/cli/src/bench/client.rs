//! A lean AMQP 0-9-1 client for the load generator, on Postroom's own codec: it writes
//! many publishes per syscall and reads deliveries in bulk, so that the client costs far
//! less CPU than the broker it measures (general-purpose clients spend more per message
//! than a broker does, which would make them the bottleneck on a small machine).

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use postroom_amqp::constants::PROTOCOL_HEADER;
use postroom_amqp::frame::{self, encode_content};
use postroom_amqp::method::*;
use postroom_amqp::{DecodeError, FieldTable, Frame, LongStr, Method, ShortStr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The parts of an `amqp://user:pass@host:port/vhost` URL.
#[derive(Debug, Clone)]
pub struct Url {
    user: String,
    password: String,
    addr: String,
    vhost: String,
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Url {
    /// Parses an AMQP URL (defaults: guest/guest, port 5672, vhost `/`).
    pub fn parse(url: &str) -> anyhow::Result<Url> {
        let rest = url.strip_prefix("amqp://").context("only amqp:// URLs are supported")?;
        let (authority, vhost) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, host) = authority.rsplit_once('@').unwrap_or(("guest:guest", authority));
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        let vhost = vhost.split('?').next().unwrap_or("");
        let addr = if host.contains(':') { host.to_string() } else { format!("{host}:5672") };
        Ok(Url {
            user: percent_decode(user),
            password: percent_decode(password),
            addr,
            vhost: if vhost.is_empty() { "/".into() } else { percent_decode(vhost) },
        })
    }
}

/// The read half: frames in, decoded.
pub struct Reader {
    socket: OwnedReadHalf,
    buf: BytesMut,
}

impl Reader {
    /// The next frame.
    pub async fn frame(&mut self) -> anyhow::Result<Frame> {
        loop {
            match frame::check(&self.buf, 0) {
                Ok(len) => return Ok(Frame::parse(self.buf.split_to(len).freeze())?),
                Err(DecodeError::Incomplete) => {
                    if self.buf.capacity() - self.buf.len() < 64 * 1024 {
                        self.buf.reserve(256 * 1024);
                    }
                    if self.socket.read_buf(&mut self.buf).await? == 0 {
                        bail!("the broker closed the connection");
                    }
                }
                Err(e) => bail!("bad frame from the broker: {e}"),
            }
        }
    }

    /// Whether a whole frame is already buffered (no read needed).
    pub fn has_frame(&self) -> bool {
        frame::check(&self.buf, 0).is_ok()
    }

    /// The next method, failing on a connection or channel close.
    pub async fn method(&mut self) -> anyhow::Result<Method> {
        loop {
            match self.frame().await? {
                Frame::Method { method: Method::ConnectionClose(c), .. } => {
                    bail!("connection closed by the broker: {} {}", c.reply_code, c.reply_text)
                }
                Frame::Method { method: Method::ChannelClose(c), .. } => {
                    bail!("channel closed by the broker: {} {}", c.reply_code, c.reply_text)
                }
                Frame::Method { method, .. } => return Ok(method),
                _ => continue,
            }
        }
    }
}

/// The write half: frames out, buffered until [`Writer::flush`].
pub struct Writer {
    socket: OwnedWriteHalf,
    /// Frames not yet written.
    pub buf: BytesMut,
    /// The negotiated frame_max.
    pub frame_max: u32,
}

impl Writer {
    /// Buffers a method on channel 1.
    pub fn method(&mut self, method: impl Into<Method>) {
        method.into().encode_frame(1, &mut self.buf);
    }

    /// Buffers a publish with its content.
    pub fn publish(
        &mut self,
        exchange: &ShortStr,
        routing_key: &ShortStr,
        raw_properties: &[u8],
        body: &[u8],
    ) {
        let publish = BasicPublish {
            ticket: 0,
            exchange: exchange.clone(),
            routing_key: routing_key.clone(),
            mandatory: false,
            immediate: false,
        };
        Method::BasicPublish(publish).encode_frame(1, &mut self.buf);
        encode_content(1, raw_properties, body, self.frame_max, &mut self.buf);
    }

    /// Writes everything buffered.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.buf.is_empty() {
            self.socket.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Opens a connection and channel 1.
pub async fn connect(url: &Url) -> anyhow::Result<(Reader, Writer)> {
    let socket = TcpStream::connect(&url.addr)
        .await
        .with_context(|| format!("connecting to {}", url.addr))?;
    socket.set_nodelay(true)?;
    let (read, write) = socket.into_split();
    let mut reader = Reader { socket: read, buf: BytesMut::with_capacity(256 * 1024) };
    let mut writer =
        Writer { socket: write, buf: BytesMut::with_capacity(256 * 1024), frame_max: 131_072 };
    writer.buf.extend_from_slice(&PROTOCOL_HEADER);
    writer.flush().await?;
    let Method::ConnectionStart(_) = reader.method().await? else {
        bail!("expected connection.start")
    };
    let mut response = vec![0];
    response.extend_from_slice(url.user.as_bytes());
    response.push(0);
    response.extend_from_slice(url.password.as_bytes());
    let start_ok = ConnectionStartOk {
        client_properties: FieldTable::new(),
        mechanism: ShortStr::from_static("PLAIN"),
        response: LongStr::from(response),
        locale: ShortStr::from_static("en_US"),
    };
    Method::from(start_ok).encode_frame(0, &mut writer.buf);
    writer.flush().await?;
    let Method::ConnectionTune(tune) = reader.method().await? else {
        bail!("expected connection.tune")
    };
    writer.frame_max = if tune.frame_max == 0 { 131_072 } else { tune.frame_max };
    let tune_ok = ConnectionTuneOk { channel_max: 1, frame_max: writer.frame_max, heartbeat: 0 };
    Method::from(tune_ok).encode_frame(0, &mut writer.buf);
    let open = ConnectionOpen { virtual_host: url.vhost.as_str().into(), ..Default::default() };
    Method::from(open).encode_frame(0, &mut writer.buf);
    writer.method(ChannelOpen::default());
    writer.flush().await?;
    let Method::ConnectionOpenOk(_) = reader.method().await? else {
        bail!("expected connection.open-ok")
    };
    let Method::ChannelOpenOk(_) = reader.method().await? else {
        bail!("expected channel.open-ok")
    };
    Ok((reader, writer))
}

/// Sends a method and waits for its reply (the next method on the channel).
pub async fn call(
    reader: &mut Reader,
    writer: &mut Writer,
    method: impl Into<Method>,
) -> anyhow::Result<Method> {
    writer.method(method);
    writer.flush().await?;
    reader.method().await
}

/// Closes the connection politely.
pub async fn close(mut reader: Reader, mut writer: Writer) {
    let close =
        ConnectionClose { reply_code: 200, reply_text: "bye".into(), class_id: 0, method_id: 0 };
    Method::from(close).encode_frame(0, &mut writer.buf);
    if writer.flush().await.is_ok() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while let Ok(frame) = reader.frame().await {
                if let Frame::Method { method: Method::ConnectionCloseOk(_), .. } = frame {
                    break;
                }
            }
        })
        .await;
    }
}

/// A delivered message's body.
pub fn body_of(frames: &mut Vec<Bytes>) -> Bytes {
    match frames.len() {
        1 => frames.pop().unwrap_or_default(),
        _ => {
            let mut body = BytesMut::new();
            for part in frames.drain(..) {
                body.extend_from_slice(&part);
            }
            body.freeze()
        }
    }
}
