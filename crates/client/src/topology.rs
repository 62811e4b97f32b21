//! Declaring exchanges, queues and bindings, with the arguments that give a queue its retry
//! policy and Dead Letter Channel.
//!
//! The `x-retry-*` arguments are Postroom's; RabbitMQ accepts and ignores unknown `x-`
//! arguments, so the same declaration works on both (on RabbitMQ a requeued message simply
//! comes back at once).

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use crate::envelope::short;
use crate::error::{Error, Result};

/// A queue and its arguments.
///
/// ```
/// use std::time::Duration;
/// use postroom_client::QueueSpec;
/// let queue = QueueSpec::new("scan.normal")
///     .retry(Duration::from_millis(500), 2.0, Duration::from_secs(30))
///     .quorum()
///     .delivery_limit(3)
///     .dead_letter("scan.dlx", Some("scan.dead"));
/// assert!(queue.arguments().inner().contains_key("x-retry-initial-delay"));
/// ```
#[derive(Debug, Clone)]
pub struct QueueSpec {
    name: String,
    options: QueueDeclareOptions,
    arguments: FieldTable,
}

impl QueueSpec {
    /// A durable queue.
    ///
    /// ```
    /// assert_eq!(postroom_client::QueueSpec::new("jobs").name(), "jobs");
    /// ```
    pub fn new(name: impl Into<String>) -> QueueSpec {
        QueueSpec {
            name: name.into(),
            options: QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() },
            arguments: FieldTable::default(),
        }
    }

    /// The queue's name.
    ///
    /// ```
    /// assert_eq!(postroom_client::QueueSpec::new("jobs").name(), "jobs");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The arguments declared so far.
    ///
    /// ```
    /// assert!(postroom_client::QueueSpec::new("jobs").arguments().inner().is_empty());
    /// ```
    pub fn arguments(&self) -> &FieldTable {
        &self.arguments
    }

    /// A non-durable queue deleted when its last consumer goes.
    ///
    /// ```
    /// let queue = postroom_client::QueueSpec::new("rpc").transient();
    /// # drop(queue);
    /// ```
    pub fn transient(mut self) -> QueueSpec {
        self.options.durable = false;
        self.options.auto_delete = true;
        self
    }

    /// Postroom's retry policy: a nack with requeue comes back after
    /// `min(max, initial × multiplier^(n-1))` (±10 % jitter by default).
    ///
    /// ```
    /// use std::time::Duration;
    /// let queue = postroom_client::QueueSpec::new("jobs")
    ///     .retry(Duration::from_secs(1), 2.0, Duration::from_secs(60));
    /// assert!(queue.arguments().inner().contains_key("x-retry-max-delay"));
    /// ```
    pub fn retry(self, initial: Duration, multiplier: f64, max: Duration) -> QueueSpec {
        self.argument("x-retry-initial-delay", AMQPValue::LongLongInt(millis(initial)))
            .argument("x-retry-multiplier", AMQPValue::Double(multiplier))
            .argument("x-retry-max-delay", AMQPValue::LongLongInt(millis(max)))
    }

    /// Postroom's retry jitter, a fraction 0–1 of the delay.
    ///
    /// ```
    /// let queue = postroom_client::QueueSpec::new("jobs").retry_jitter(0.2);
    /// assert!(queue.arguments().inner().contains_key("x-retry-jitter"));
    /// ```
    pub fn retry_jitter(self, jitter: f64) -> QueueSpec {
        self.argument("x-retry-jitter", AMQPValue::Double(jitter))
    }

    /// `x-delivery-limit`: dead-letter a message returned more than `limit` times.
    ///
    /// Postroom honours it on every queue. RabbitMQ honours it only on quorum queues (3.10
    /// and later ignore it on classic queues): declare the queue [`quorum`](Self::quorum)
    /// too when it must work there.
    ///
    /// ```
    /// let queue = postroom_client::QueueSpec::new("jobs").quorum().delivery_limit(3);
    /// assert!(queue.arguments().inner().contains_key("x-delivery-limit"));
    /// ```
    pub fn delivery_limit(self, limit: u32) -> QueueSpec {
        self.argument("x-delivery-limit", AMQPValue::LongLongInt(i64::from(limit)))
    }

    /// `x-queue-type: quorum`. RabbitMQ needs it for [`delivery_limit`](Self::delivery_limit)
    /// (and for `x-delivery-count` on redeliveries); a quorum queue there must be durable and
    /// cannot be [`transient`](Self::transient). Postroom treats both types alike.
    ///
    /// ```
    /// let queue = postroom_client::QueueSpec::new("jobs").quorum();
    /// assert!(queue.arguments().inner().contains_key("x-queue-type"));
    /// ```
    pub fn quorum(self) -> QueueSpec {
        self.argument("x-queue-type", string("quorum"))
    }

    /// `x-dead-letter-exchange` (and `-routing-key`): where rejected, expired and
    /// over-the-limit messages go.
    ///
    /// ```
    /// let queue = postroom_client::QueueSpec::new("jobs").dead_letter("dlx", Some("jobs.dead"));
    /// assert!(queue.arguments().inner().contains_key("x-dead-letter-routing-key"));
    /// ```
    pub fn dead_letter(self, exchange: &str, routing_key: Option<&str>) -> QueueSpec {
        let spec = self.argument("x-dead-letter-exchange", string(exchange));
        match routing_key {
            Some(key) => spec.argument("x-dead-letter-routing-key", string(key)),
            None => spec,
        }
    }

    /// `x-max-priority`.
    ///
    /// ```
    /// let queue = postroom_client::QueueSpec::new("scan").max_priority(10);
    /// assert!(queue.arguments().inner().contains_key("x-max-priority"));
    /// ```
    pub fn max_priority(self, max: u8) -> QueueSpec {
        self.argument("x-max-priority", AMQPValue::LongLongInt(i64::from(max)))
    }

    /// `x-message-deduplication`: the broker drops a message whose `message_id` it has seen.
    ///
    /// ```
    /// let queue = postroom_client::QueueSpec::new("payments").deduplication();
    /// assert!(queue.arguments().inner().contains_key("x-message-deduplication"));
    /// ```
    pub fn deduplication(self) -> QueueSpec {
        self.argument("x-message-deduplication", AMQPValue::Boolean(true))
    }

    /// Any other argument.
    ///
    /// ```
    /// use postroom_client::{QueueSpec, lapin::types::AMQPValue};
    /// let queue = QueueSpec::new("q").argument("x-message-ttl", AMQPValue::LongLongInt(60_000));
    /// assert!(queue.arguments().inner().contains_key("x-message-ttl"));
    /// ```
    pub fn argument(mut self, name: &str, value: AMQPValue) -> QueueSpec {
        if let Ok(name) = short("argument", name) {
            self.arguments.insert(name, value);
        }
        self
    }

    /// Declares the queue (idempotent when the arguments are equal).
    ///
    /// ```no_run
    /// # async fn run(channel: lapin::Channel) -> postroom_client::Result<()> {
    /// postroom_client::QueueSpec::new("jobs").declare(&channel).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Amqp`] when the broker refuses it (`406` for a different existing
    /// declaration or a bad argument).
    pub async fn declare(&self, channel: &Channel) -> Result<()> {
        channel
            .queue_declare(short("queue", &self.name)?, self.options, self.arguments.clone())
            .await
            .map(drop)
            .map_err(Error::amqp("queue.declare"))
    }
}

/// An exchange.
///
/// ```
/// use postroom_client::ExchangeSpec;
/// let router = ExchangeSpec::topic("scan");
/// let delayed = ExchangeSpec::delayed("retry", "direct");
/// assert_eq!(router.name(), "scan");
/// # drop(delayed);
/// ```
#[derive(Debug, Clone)]
pub struct ExchangeSpec {
    name: String,
    kind: ExchangeKind,
    arguments: FieldTable,
}

impl ExchangeSpec {
    /// A durable exchange of `kind`.
    ///
    /// ```
    /// use postroom_client::{ExchangeSpec, lapin::ExchangeKind};
    /// let headers = ExchangeSpec::new("by-tenant", ExchangeKind::Headers);
    /// # drop(headers);
    /// ```
    pub fn new(name: impl Into<String>, kind: ExchangeKind) -> ExchangeSpec {
        ExchangeSpec { name: name.into(), kind, arguments: FieldTable::default() }
    }

    /// A durable direct exchange.
    ///
    /// ```
    /// let dlx = postroom_client::ExchangeSpec::direct("dlx");
    /// # drop(dlx);
    /// ```
    pub fn direct(name: impl Into<String>) -> ExchangeSpec {
        ExchangeSpec::new(name, ExchangeKind::Direct)
    }

    /// A durable topic exchange.
    ///
    /// ```
    /// let router = postroom_client::ExchangeSpec::topic("scan");
    /// # drop(router);
    /// ```
    pub fn topic(name: impl Into<String>) -> ExchangeSpec {
        ExchangeSpec::new(name, ExchangeKind::Topic)
    }

    /// A durable fanout exchange.
    ///
    /// ```
    /// let results = postroom_client::ExchangeSpec::fanout("scan.results");
    /// # drop(results);
    /// ```
    pub fn fanout(name: impl Into<String>) -> ExchangeSpec {
        ExchangeSpec::new(name, ExchangeKind::Fanout)
    }

    /// A delayed-message exchange (`x-delayed-message`) routing like `routes_as` once a
    /// message's `x-delay` has passed.
    ///
    /// ```
    /// let retry = postroom_client::ExchangeSpec::delayed("retry", "direct");
    /// assert_eq!(retry.name(), "retry");
    /// ```
    pub fn delayed(name: impl Into<String>, routes_as: &str) -> ExchangeSpec {
        let mut spec = ExchangeSpec::new(name, ExchangeKind::Custom("x-delayed-message".into()));
        spec.arguments.insert("x-delayed-type".into(), string(routes_as));
        spec
    }

    /// The exchange's name.
    ///
    /// ```
    /// assert_eq!(postroom_client::ExchangeSpec::fanout("results").name(), "results");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Declares the exchange.
    ///
    /// ```no_run
    /// # async fn run(channel: lapin::Channel) -> postroom_client::Result<()> {
    /// postroom_client::ExchangeSpec::topic("scan").declare(&channel).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Amqp`] when the broker refuses it.
    pub async fn declare(&self, channel: &Channel) -> Result<()> {
        let options = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        channel
            .exchange_declare(
                short("exchange", &self.name)?,
                self.kind.clone(),
                options,
                self.arguments.clone(),
            )
            .await
            .map_err(Error::amqp("exchange.declare"))
    }
}

/// Binds `queue` to `exchange` with `routing_key`.
///
/// ```no_run
/// # async fn run(channel: lapin::Channel) -> postroom_client::Result<()> {
/// postroom_client::bind(&channel, "scan.high", "scan", "scan.high").await?;
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`Error::Amqp`] when either side does not exist.
pub async fn bind(channel: &Channel, queue: &str, exchange: &str, routing_key: &str) -> Result<()> {
    channel
        .queue_bind(
            short("queue", queue)?,
            short("exchange", exchange)?,
            short("routing_key", routing_key)?,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(Error::amqp("queue.bind"))
}

fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Regression: delivery_limit silently made the queue a quorum queue, which RabbitMQ
    // refuses to redeclare over an existing classic queue (406) and refuses as transient.
    #[test]
    fn a_delivery_limit_leaves_the_queue_type_to_the_caller() {
        let limited = QueueSpec::new("jobs").delivery_limit(3);
        assert!(limited.arguments().inner().contains_key("x-delivery-limit"));
        assert!(!limited.arguments().inner().contains_key("x-queue-type"));
        let quorum = QueueSpec::new("jobs").quorum().delivery_limit(3);
        assert!(matches!(
            quorum.arguments().inner().get("x-queue-type"),
            Some(AMQPValue::LongString(kind)) if kind.to_string() == "quorum"
        ));
    }
}
