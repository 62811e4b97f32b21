//! Server settings, with defaults that run without a config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use postroom_store::{Durability, Faults, StoreConfig};
use serde::{Deserialize, Deserializer};

/// A user allowed to connect.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Password.
    pub password: String,
    /// The virtual hosts it may open; all of them when absent.
    #[serde(default)]
    pub vhosts: Option<Vec<String>>,
}

impl User {
    /// A user who may open every virtual host.
    pub fn new(name: &str, password: &str) -> User {
        User { name: name.into(), password: password.into(), vhosts: None }
    }
}

/// Server settings. Every limit has RabbitMQ's default unless noted.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// AMQP listener address.
    pub amqp_listen: SocketAddr,
    /// HTTP listener address.
    pub http_listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Largest frame the server accepts and proposes (bytes, framing included).
    pub frame_max: u32,
    /// Highest channel number a connection may open.
    pub channel_max: u16,
    /// Heartbeat interval proposed to clients, in seconds (0 disables).
    pub heartbeat: u16,
    /// Largest message body accepted, in bytes.
    pub max_message_size: u64,
    /// How long a client has to complete the handshake.
    #[serde(with = "millis")]
    pub handshake_timeout: Duration,
    /// Users. `guest` may only connect from loopback addresses, as in RabbitMQ.
    pub users: Vec<User>,
    /// Virtual hosts clients may open (each with its own exchanges, queues and bindings).
    pub vhosts: Vec<String>,
    /// When persistent messages are made durable: `fsync` (confirm after fsync, the
    /// default), `interval:<ms>` or `none`.
    #[serde(deserialize_with = "from_text")]
    pub durability: Durability,
    /// Journal segment size in bytes.
    pub segment_size: u64,
    /// Start even when a journal segment is damaged inside, skipping the damage.
    pub recover_skip_corrupt: bool,
    /// Bytes of ready messages a queue keeps in memory; past it, new messages wait in the
    /// journal only and are read back as the queue drains.
    pub queue_memory_limit: usize,
    /// Bytes of ready messages all queues together keep in memory; past it, every queue's
    /// new messages wait in the journal.
    pub message_memory_limit: usize,
    /// Free bytes the data directory's file system must keep; under it, publishing
    /// connections are blocked (`connection.blocked`) until there is room again.
    pub disk_free_limit: u64,
    /// Injected store failures, for fault tests (`write:N,sync:M`); set from the
    /// `POSTROOM_FAILPOINTS` environment variable, never from the config file.
    #[serde(skip)]
    pub faults: Faults,
}

fn from_text<'de, D: Deserializer<'de>, T: std::str::FromStr<Err = String>>(
    d: D,
) -> Result<T, D::Error> {
    String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
}

mod millis {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            amqp_listen: SocketAddr::from(([127, 0, 0, 1], 5672)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 15672)),
            data_dir: PathBuf::from("postroom-data"),
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 60,
            max_message_size: 16 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            users: vec![User::new("guest", "guest")],
            vhosts: vec!["/".into()],
            durability: Durability::Fsync,
            segment_size: 64 * 1024 * 1024,
            recover_skip_corrupt: false,
            queue_memory_limit: postroom_core::broker::DEFAULT_QUEUE_MEMORY_LIMIT,
            message_memory_limit: postroom_core::broker::DEFAULT_MESSAGE_MEMORY_LIMIT,
            // RabbitMQ's default.
            disk_free_limit: 50_000_000,
            faults: Faults::default(),
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {field}: {reason}")]
pub struct ConfigError {
    /// The setting.
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

impl ServerConfig {
    /// Checks the settings, failing on the first that cannot work.
    ///
    /// # Errors
    /// [`ConfigError`] naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field, reason: &str| Err(ConfigError { field, reason: reason.into() });
        if self.frame_max < postroom_amqp::constants::FRAME_MIN_SIZE {
            return fail("frame_max", "must be at least 4096");
        }
        if self.channel_max == 0 {
            return fail("channel_max", "must be at least 1");
        }
        if self.max_message_size == 0 || self.max_message_size > 512 * 1024 * 1024 {
            return fail("max_message_size", "must be between 1 byte and 512 MiB");
        }
        if self.users.is_empty() {
            return fail("users", "at least one user is needed");
        }
        if self.vhosts.iter().any(|v| v.is_empty() || v.len() > 255) {
            return fail("vhosts", "names must be 1 to 255 bytes long");
        }
        self.store_config()
            .validate()
            .map_err(|reason| ConfigError { field: "segment_size", reason })
    }

    /// The store's settings.
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            durability: self.durability,
            segment_size: self.segment_size,
            recover_skip_corrupt: self.recover_skip_corrupt,
            faults: self.faults,
        }
    }
}
