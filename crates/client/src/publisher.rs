//! The publisher: typed messages in an envelope, confirmed by the broker, resent after a
//! reconnect.
//!
//! One channel in confirm mode is shared by every caller (lapin channels are safe to use
//! concurrently; each publish awaits its own confirm). The channel sits behind a
//! `tokio::sync::Mutex` only while it is looked up or replaced, never during a publish.
//! Shared channels are numbered, so a publish that failed on an old one never discards the
//! one that replaced it. A publish whose shared channel the broker closed (its own fault or
//! another's) tries once more on a channel of its own, closed after use.
//!
//! Delivery is at-least-once: when the connection drops between the publish and its confirm,
//! the message is sent again on the new connection with the same `message_id`, so a queue with
//! `x-message-deduplication` (or an idempotent receiver) drops the copy.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::sync::Mutex;

use crate::codec::{Codec, Json};
use crate::connector::{Backoff, Connector};
use crate::envelope::{Envelope, short};
use crate::error::{Error, Result};
use crate::message::Message;

/// Header asking a delayed exchange to hold a message (milliseconds).
///
/// ```
/// assert_eq!(postroom_client::X_DELAY, "x-delay");
/// ```
pub const X_DELAY: &str = "x-delay";

/// Publisher settings. `Default` gives confirms on, persistent messages, three attempts.
///
/// ```
/// use postroom_client::PublisherConfig;
/// let config = PublisherConfig { source: Some("scan-api".into()), ..PublisherConfig::default() };
/// config.validate().unwrap();
/// assert!(config.confirms);
/// ```
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// Written to `app_id` when the envelope names no source.
    pub source: Option<String>,
    /// Wait for the broker's confirm of every message (on by default: acknowledged means
    /// stored).
    pub confirms: bool,
    /// Send messages as persistent (`delivery_mode` 2) unless the options say otherwise.
    pub persistent: bool,
    /// Ask the broker to return messages no queue takes (`mandatory`); a returned message is
    /// an [`Error::Unroutable`]. Off by default, as in every AMQP client.
    pub mandatory: bool,
    /// Attempts per message when the connection fails under it (≥ 1).
    pub publish_attempts: u32,
    /// Longest wait for one confirm.
    pub confirm_timeout: Duration,
}

impl Default for PublisherConfig {
    fn default() -> PublisherConfig {
        PublisherConfig {
            source: None,
            confirms: true,
            persistent: true,
            mandatory: false,
            publish_attempts: 3,
            confirm_timeout: Duration::from_secs(30),
        }
    }
}

impl PublisherConfig {
    /// Checks the values.
    ///
    /// ```
    /// use postroom_client::PublisherConfig;
    /// assert!(PublisherConfig { publish_attempts: 0, ..PublisherConfig::default() }.validate().is_err());
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] naming the bad field.
    pub fn validate(&self) -> Result<()> {
        if self.publish_attempts == 0 {
            return Err(Error::Config("publish_attempts must be ≥ 1".into()));
        }
        if self.confirm_timeout.is_zero() {
            return Err(Error::Config("confirm_timeout must be > 0".into()));
        }
        Ok(())
    }
}

/// Per-message options beyond the envelope.
///
/// ```
/// use std::time::Duration;
/// use postroom_client::PublishOptions;
/// let options = PublishOptions::default().with_priority(9).with_delay(Duration::from_secs(5));
/// assert_eq!(options.priority, Some(9));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PublishOptions {
    /// `priority` property (queues with `x-max-priority`).
    pub priority: Option<u8>,
    /// Per-message TTL (`expiration` property).
    pub expiration: Option<Duration>,
    /// Hold the message this long on a delayed exchange (`x-delay` header).
    pub delay: Option<Duration>,
    /// Overrides [`PublisherConfig::persistent`].
    pub persistent: Option<bool>,
    /// Overrides [`PublisherConfig::mandatory`].
    pub mandatory: Option<bool>,
}

impl PublishOptions {
    /// Sets the priority.
    ///
    /// ```
    /// assert_eq!(postroom_client::PublishOptions::default().with_priority(3).priority, Some(3));
    /// ```
    pub fn with_priority(mut self, priority: u8) -> PublishOptions {
        self.priority = Some(priority);
        self
    }

    /// Sets the per-message TTL.
    ///
    /// ```
    /// use std::time::Duration;
    /// let options = postroom_client::PublishOptions::default().with_expiration(Duration::from_secs(60));
    /// assert_eq!(options.expiration, Some(Duration::from_secs(60)));
    /// ```
    pub fn with_expiration(mut self, ttl: Duration) -> PublishOptions {
        self.expiration = Some(ttl);
        self
    }

    /// Sets the delay (`x-delay`).
    ///
    /// ```
    /// use std::time::Duration;
    /// let options = postroom_client::PublishOptions::default().with_delay(Duration::from_secs(30));
    /// assert_eq!(options.delay, Some(Duration::from_secs(30)));
    /// ```
    pub fn with_delay(mut self, delay: Duration) -> PublishOptions {
        self.delay = Some(delay);
        self
    }

    /// Sets `mandatory`.
    ///
    /// ```
    /// assert_eq!(postroom_client::PublishOptions::default().with_mandatory(true).mandatory, Some(true));
    /// ```
    pub fn with_mandatory(mut self, mandatory: bool) -> PublishOptions {
        self.mandatory = Some(mandatory);
        self
    }
}

/// Publishes typed messages with an envelope and (by default) publisher confirms.
///
/// Safe to share between tasks (`Arc<Publisher>`); publishes run concurrently.
///
/// ```no_run
/// # async fn run() -> postroom_client::Result<()> {
/// use std::borrow::Cow;
/// use postroom_client::{Message, Publisher, PublisherConfig};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct TokenRevoked { jti: String }
/// impl Message for TokenRevoked {
///     const EXCHANGE: &'static str = "auth";
///     const MESSAGE_TYPE: &'static str = "auth.token_revoked";
///     fn routing_key(&self) -> Cow<'_, str> { "auth.token_revoked".into() }
/// }
///
/// let publisher =
///     Publisher::connect("amqp://guest:guest@127.0.0.1:5672/%2f", PublisherConfig::default())
///         .await?;
/// let envelope = publisher.publish(&TokenRevoked { jti: "abc".into() }).await?;
/// println!("confirmed {}", envelope.message_id);
/// publisher.close().await;
/// # Ok(()) }
/// ```
pub struct Publisher<C: Codec = Json> {
    connector: Arc<Connector>,
    channel: Mutex<Option<Shared>>,
    /// Numbers the shared channels opened, so that a failure on an old one never discards a
    /// newer one (after a reconnect, lapin numbers channels from 1 again).
    opened: AtomicU64,
    codec: C,
    config: PublisherConfig,
}

impl<C: Codec> std::fmt::Debug for Publisher<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Publisher<Json> {
    /// A JSON publisher with its own connection to `url`, with the default [`Backoff`] but
    /// giving up after 10 attempts (about 45 s), so that a caller hears of an outage instead
    /// of waiting for ever. Build the [`Connector`] yourself for another policy.
    ///
    /// ```no_run
    /// # async fn run() -> postroom_client::Result<()> {
    /// use postroom_client::{Publisher, PublisherConfig};
    /// let publisher = Publisher::connect("amqp://guest:guest@127.0.0.1:5672/%2f", PublisherConfig::default()).await?;
    /// publisher.close().await;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`], or [`Error::Connect`] when the broker cannot be reached.
    pub async fn connect(url: &str, config: PublisherConfig) -> Result<Publisher<Json>> {
        let backoff = Backoff { max_attempts: Some(10), ..Backoff::default() };
        let connector = Arc::new(Connector::new(url, backoff)?);
        let publisher = Publisher::new(connector, Json, config)?;
        publisher.channel().await?;
        Ok(publisher)
    }
}

impl<C: Codec> Publisher<C> {
    /// A publisher on a shared connector with the given codec. Connects lazily.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use postroom_client::{Backoff, Connector, Json, Publisher, PublisherConfig};
    /// let connector = Arc::new(Connector::new("amqp://127.0.0.1:5672/%2f", Backoff::default()).unwrap());
    /// let publisher = Publisher::new(connector, Json, PublisherConfig::default()).unwrap();
    /// # drop(publisher);
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] when the config is invalid.
    pub fn new(
        connector: Arc<Connector>,
        codec: C,
        config: PublisherConfig,
    ) -> Result<Publisher<C>> {
        config.validate()?;
        Ok(Publisher {
            connector,
            channel: Mutex::new(None),
            opened: AtomicU64::new(0),
            codec,
            config,
        })
    }

    /// The settings this publisher was built with.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use postroom_client::{Backoff, Connector, Json, Publisher, PublisherConfig};
    /// let connector = Arc::new(Connector::new("amqp://127.0.0.1:5672/%2f", Backoff::default()).unwrap());
    /// let publisher = Publisher::new(connector, Json, PublisherConfig::default()).unwrap();
    /// assert!(publisher.config().confirms);
    /// ```
    pub fn config(&self) -> &PublisherConfig {
        &self.config
    }

    /// The codec in use.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use postroom_client::{Backoff, Codec, Connector, Json, Publisher, PublisherConfig};
    /// let connector = Arc::new(Connector::new("amqp://127.0.0.1:5672/%2f", Backoff::default()).unwrap());
    /// let publisher = Publisher::new(connector, Json, PublisherConfig::default()).unwrap();
    /// assert_eq!(publisher.codec().content_type(), "application/json");
    /// ```
    pub fn codec(&self) -> &C {
        &self.codec
    }

    /// Publishes `message` in a fresh [`Envelope`] to its own exchange and routing key.
    /// Returns the envelope sent (its `message_id` is the one to trace).
    ///
    /// ```no_run
    /// # async fn run<M: postroom_client::Message>(publisher: postroom_client::Publisher, message: M) -> postroom_client::Result<()> {
    /// let envelope = publisher.publish(&message).await?;
    /// println!("confirmed {}", envelope.message_id);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// See [`publish_raw`](Self::publish_raw).
    pub async fn publish<M: Message>(&self, message: &M) -> Result<Envelope> {
        self.publish_with(message, Envelope::new(), &PublishOptions::default()).await
    }

    /// Publishes `message` in the given envelope (e.g. [`Envelope::caused_by`]), filling in
    /// the type, content type and source.
    ///
    /// ```no_run
    /// # async fn run<M: postroom_client::Message>(publisher: postroom_client::Publisher, reply: M, request: postroom_client::Incoming) -> postroom_client::Result<()> {
    /// use postroom_client::{Envelope, PublishOptions};
    /// publisher.publish_with(&reply, Envelope::caused_by(&request.envelope), &PublishOptions::default()).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// See [`publish_raw`](Self::publish_raw).
    pub async fn publish_with<M: Message>(
        &self,
        message: &M,
        mut envelope: Envelope,
        options: &PublishOptions,
    ) -> Result<Envelope> {
        let body = self.codec.encode(message)?;
        envelope.message_type.get_or_insert_with(|| M::MESSAGE_TYPE.to_string());
        envelope.content_type.get_or_insert_with(|| self.codec.content_type().to_string());
        if envelope.source.is_none() {
            envelope.source.clone_from(&self.config.source);
        }
        self.publish_raw(M::EXCHANGE, &message.routing_key(), &body, &envelope, options).await?;
        Ok(envelope)
    }

    /// Publishes a ready-made body. The envelope's source defaults to the config's.
    ///
    /// ```no_run
    /// # async fn run(publisher: postroom_client::Publisher) -> postroom_client::Result<()> {
    /// use postroom_client::{Envelope, PublishOptions};
    /// publisher.publish_raw("", "jobs", b"{}", &Envelope::new(), &PublishOptions::default()).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// - [`Error::Invalid`] for names or ids longer than 255 bytes;
    /// - [`Error::Nacked`] when the broker refused the message;
    /// - [`Error::Unroutable`] when a `mandatory` message reached no queue;
    /// - [`Error::Timeout`] when no confirm came in time;
    /// - [`Error::Amqp`] when the broker closed the channel (e.g. `404` for a missing
    ///   exchange), or [`Error::Connect`] when every attempt lost the connection.
    pub async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        envelope: &Envelope,
        options: &PublishOptions,
    ) -> Result<()> {
        let exchange = short("exchange", exchange)?;
        let routing_key = short("routing_key", routing_key)?;
        let properties = self.properties(envelope, options)?;
        let publish_options = BasicPublishOptions {
            mandatory: options.mandatory.unwrap_or(self.config.mandatory),
            ..BasicPublishOptions::default()
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let shared = self.channel().await?;
            let sent = self
                .publish_on(
                    &shared.channel,
                    exchange.clone(),
                    routing_key.clone(),
                    body,
                    &properties,
                    publish_options,
                )
                .await;
            let (operation, source) = match sent {
                Ok(confirmation) => return self.confirmed(confirmation, envelope),
                Err(PublishError::Timeout) => {
                    return Err(Error::Timeout(self.config.confirm_timeout));
                }
                Err(PublishError::Failed { operation, source }) => (operation, source),
            };
            self.forget(shared.number).await;
            let lost = self.connection_lost().await;
            if lost && attempt < self.config.publish_attempts {
                tokio::time::sleep(self.connector.backoff().delay(attempt)).await;
                continue;
            }
            // The broker closed the shared channel on a live connection. The publish that
            // caused it (say, to a missing exchange) and every other publish in flight on
            // the channel see the same close. Each tries once more on a channel of its own,
            // so that the culprit fails again there without taking anyone else's publish
            // with it, and the others go through.
            if !lost && !shared.channel.status().connected() {
                let confirmation = self
                    .publish_alone(&exchange, &routing_key, body, &properties, publish_options)
                    .await?;
                return self.confirmed(confirmation, envelope);
            }
            return Err(Error::Amqp { operation, source });
        }
    }

    /// Sends one publish on `channel` and waits for its confirm (when confirms are on).
    async fn publish_on(
        &self,
        channel: &Channel,
        exchange: ShortString,
        routing_key: ShortString,
        body: &[u8],
        properties: &BasicProperties,
        options: BasicPublishOptions,
    ) -> std::result::Result<Confirmation, PublishError> {
        let confirm = channel
            .basic_publish(exchange, routing_key, options, body, properties.clone())
            .await
            .map_err(|source| PublishError::Failed { operation: "basic.publish", source })?;
        if !self.config.confirms {
            return Ok(Confirmation::NotRequested);
        }
        match tokio::time::timeout(self.config.confirm_timeout, confirm).await {
            Err(_) => Err(PublishError::Timeout),
            Ok(Ok(confirmation)) => Ok(confirmation),
            Ok(Err(source)) => Err(PublishError::Failed { operation: "confirm", source }),
        }
    }

    /// Publishes on a channel opened for this message alone, then closes it.
    async fn publish_alone(
        &self,
        exchange: &ShortString,
        routing_key: &ShortString,
        body: &[u8],
        properties: &BasicProperties,
        options: BasicPublishOptions,
    ) -> Result<Confirmation> {
        let channel = self.open_channel().await?;
        let sent = self
            .publish_on(&channel, exchange.clone(), routing_key.clone(), body, properties, options)
            .await;
        if channel.status().connected() {
            // Closed after use either way; a failure to close leaves nothing to release.
            let _ = channel.close(200, "done".into()).await;
        }
        sent.map_err(|error| match error {
            PublishError::Timeout => Error::Timeout(self.config.confirm_timeout),
            PublishError::Failed { operation, source } => Error::Amqp { operation, source },
        })
    }

    fn confirmed(&self, confirmation: Confirmation, envelope: &Envelope) -> Result<()> {
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Err(Error::Unroutable {
                    message_id: envelope.message_id.clone(),
                    reply_code: returned.reply_code,
                    reply_text: returned.reply_text.to_string(),
                })
            }
            Confirmation::Nack(None) => {
                Err(Error::Nacked { message_id: envelope.message_id.clone() })
            }
        }
    }

    /// Closes the channel and the connector's connection.
    ///
    /// ```no_run
    /// # async fn run(publisher: postroom_client::Publisher) {
    /// publisher.close().await;
    /// # }
    /// ```
    pub async fn close(&self) {
        if let Some(Shared { channel, .. }) = self.channel.lock().await.take()
            && channel.status().connected()
        {
            // A channel the broker already closed has nothing to release.
            let _ = channel.close(200, "bye".into()).await;
        }
        self.connector.close().await;
    }

    fn properties(&self, envelope: &Envelope, options: &PublishOptions) -> Result<BasicProperties> {
        let mut envelope = envelope.clone();
        if envelope.source.is_none() {
            envelope.source.clone_from(&self.config.source);
        }
        if let Some(delay) = options.delay {
            let millis = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            envelope.headers.insert(X_DELAY.into(), AMQPValue::LongLongInt(millis));
        }
        let mut properties = envelope.to_properties()?;
        let persistent = options.persistent.unwrap_or(self.config.persistent);
        properties = properties.with_delivery_mode(if persistent { 2 } else { 1 });
        if let Some(priority) = options.priority {
            properties = properties.with_priority(priority);
        }
        if let Some(ttl) = options.expiration {
            properties = properties.with_expiration(ttl.as_millis().to_string().into());
        }
        Ok(properties)
    }

    /// The shared channel, opened (and put in confirm mode) when missing or closed.
    async fn channel(&self) -> Result<Shared> {
        let mut slot = self.channel.lock().await;
        if let Some(shared) = slot.as_ref()
            && shared.channel.status().connected()
        {
            return Ok(shared.clone());
        }
        let channel = self.open_channel().await?;
        let number = self.opened.fetch_add(1, Ordering::Relaxed) + 1;
        let shared = Shared { number, channel };
        *slot = Some(shared.clone());
        Ok(shared)
    }

    /// A new channel, in confirm mode when confirms are on.
    async fn open_channel(&self) -> Result<Channel> {
        let channel = self.connector.channel().await?;
        if self.config.confirms {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(Error::amqp("confirm.select"))?;
        }
        Ok(channel)
    }

    /// Drops the shared channel numbered `failed`, unless it was replaced already.
    async fn forget(&self, failed: u64) {
        let mut slot = self.channel.lock().await;
        if slot.as_ref().is_some_and(|shared| shared.number == failed) {
            *slot = None;
        }
    }

    /// Whether a failed publish lost the connection (worth another attempt on a new one)
    /// rather than being refused on a live connection (a channel error, not worth retrying).
    async fn connection_lost(&self) -> bool {
        !self.connector.is_connected().await
    }
}

/// The shared channel and its number (see `Publisher::opened`).
#[derive(Clone)]
struct Shared {
    number: u64,
    channel: Channel,
}

/// How one attempt at a publish failed.
enum PublishError {
    /// No confirm within `confirm_timeout`.
    Timeout,
    /// lapin failed the publish or its confirm.
    Failed { operation: &'static str, source: lapin::Error },
}
