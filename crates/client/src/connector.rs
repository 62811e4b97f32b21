//! Connection management: one lapin connection, re-established with exponential backoff
//! whenever it is found closed.
//!
//! The connection lives behind a `tokio::sync::Mutex` held across the connect `.await`, so
//! that concurrent callers wait for one reconnect instead of each opening a connection.

use std::sync::Arc;
use std::time::Duration;

use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use crate::error::{Error, Result};

/// Exponential backoff between reconnect attempts: `initial × multiplier^(n-1)`, capped at
/// `max`, with ±`jitter` (a fraction) of random spread so that many clients do not reconnect
/// in step.
///
/// ```
/// use std::time::Duration;
/// use postroom_client::Backoff;
/// let backoff = Backoff { jitter: 0.0, ..Backoff::default() };
/// assert_eq!(backoff.delay(1), Duration::from_millis(100));
/// assert_eq!(backoff.delay(2), Duration::from_millis(200));
/// assert_eq!(backoff.delay(30), Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// Delay before the second attempt.
    pub initial: Duration,
    /// Growth per attempt (≥ 1).
    pub multiplier: f64,
    /// Longest delay.
    pub max: Duration,
    /// Random spread as a fraction of the delay (0 to 1).
    pub jitter: f64,
    /// Attempts before giving up; `None` (the default) retries forever, as a long-running
    /// worker should: a broker restart or an outage longer than the limit would otherwise
    /// stop it for good.
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    /// 100 ms doubling to 10 s, ±10 %, retrying forever. Set `max_attempts` where a caller
    /// must hear of an outage instead (e.g. `Some(10)`, about 45 s).
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max: Duration::from_secs(10),
            jitter: 0.1,
            max_attempts: None,
        }
    }
}

impl Backoff {
    /// The wait after the `attempt`-th failure (1-based).
    ///
    /// ```
    /// let backoff = postroom_client::Backoff { jitter: 0.0, ..Default::default() };
    /// assert_eq!(backoff.delay(3), std::time::Duration::from_millis(400));
    /// ```
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let base = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = base.min(self.max.as_secs_f64());
        let spread = if self.jitter > 0.0 {
            capped * self.jitter * (rand::random::<f64>() * 2.0 - 1.0)
        } else {
            0.0
        };
        Duration::from_secs_f64((capped + spread).clamp(0.0, self.max.as_secs_f64()))
    }

    /// Checks the values.
    ///
    /// ```
    /// use postroom_client::Backoff;
    /// assert!(Backoff { multiplier: 0.5, ..Backoff::default() }.validate().is_err());
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] naming the bad field.
    pub fn validate(&self) -> Result<()> {
        if !(self.multiplier >= 1.0 && self.multiplier.is_finite()) {
            return Err(Error::Config(format!(
                "backoff multiplier {} must be ≥ 1",
                self.multiplier
            )));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(Error::Config(format!("backoff jitter {} must be in 0..=1", self.jitter)));
        }
        if self.max < self.initial {
            return Err(Error::Config("backoff max must be ≥ initial".into()));
        }
        if self.max_attempts == Some(0) {
            return Err(Error::Config("backoff max_attempts must be ≥ 1".into()));
        }
        Ok(())
    }
}

/// A broker connection that reconnects on demand.
///
/// Cheap to share behind an `Arc`; every method is safe to call from many tasks.
///
/// ```no_run
/// # async fn run() -> postroom_client::Result<()> {
/// use postroom_client::{Backoff, Connector};
/// let connector = Connector::new("amqp://guest:guest@127.0.0.1:5672/%2f", Backoff::default())?;
/// let channel = connector.channel().await?;
/// # drop(channel);
/// connector.close().await;
/// # Ok(()) }
/// ```
pub struct Connector {
    url: String,
    name: Option<String>,
    backoff: Backoff,
    current: Mutex<Option<Arc<Connection>>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("Connector").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector for `url` (`amqp://user:pass@host:port/vhost`). Connects lazily.
    ///
    /// ```
    /// use postroom_client::{Backoff, Connector};
    /// let connector = Connector::new("amqp://guest:guest@127.0.0.1:5672/%2f", Backoff::default()).unwrap();
    /// # drop(connector);
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] when the backoff is invalid.
    pub fn new(url: impl Into<String>, backoff: Backoff) -> Result<Connector> {
        backoff.validate()?;
        Ok(Connector { url: url.into(), name: None, backoff, current: Mutex::new(None) })
    }

    /// Sets the connection name shown by the broker's management tools.
    ///
    /// ```
    /// use postroom_client::{Backoff, Connector};
    /// let connector = Connector::new("amqp://127.0.0.1:5672/%2f", Backoff::default()).unwrap().with_name("auth-worker");
    /// # drop(connector);
    /// ```
    pub fn with_name(mut self, name: impl Into<String>) -> Connector {
        self.name = Some(name.into());
        self
    }

    /// The backoff used between attempts.
    ///
    /// ```
    /// use postroom_client::{Backoff, Connector};
    /// let connector = Connector::new("amqp://127.0.0.1:5672/%2f", Backoff::default()).unwrap();
    /// assert_eq!(connector.backoff(), &Backoff::default());
    /// ```
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// The open connection, connecting (with backoff) when there is none or it has closed.
    ///
    /// ```no_run
    /// # async fn run(connector: postroom_client::Connector) -> postroom_client::Result<()> {
    /// let connection = connector.connection().await?;
    /// assert!(connection.status().connected());
    /// # Ok(()) }
    /// ```
    ///
    /// Waits as long as the broker stays unreachable when the backoff has no
    /// `max_attempts` (the default).
    ///
    /// # Errors
    /// [`Error::Connect`] after `max_attempts` failures.
    pub async fn connection(&self) -> Result<Arc<Connection>> {
        let mut current = self.current.lock().await;
        if let Some(connection) = current.as_ref() {
            if connection.status().connected() {
                return Ok(Arc::clone(connection));
            }
            tracing::info!("broker connection lost; reconnecting");
        }
        let mut attempt = 0;
        let connection = loop {
            attempt += 1;
            let mut properties = ConnectionProperties::default();
            if let Some(name) = &self.name {
                properties = properties.with_connection_name(name.as_str().into());
            }
            match Connection::connect(&self.url, properties).await {
                Ok(connection) => break connection,
                Err(source) => {
                    if self.backoff.max_attempts.is_some_and(|max| attempt >= max) {
                        return Err(Error::Connect { attempts: attempt, source });
                    }
                    let delay = self.backoff.delay(attempt);
                    tracing::warn!(attempt, ?delay, error = %source, "connect failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        };
        let connection = Arc::new(connection);
        *current = Some(Arc::clone(&connection));
        Ok(connection)
    }

    /// Whether a connection is open now (without connecting).
    ///
    /// ```no_run
    /// # async fn run(connector: postroom_client::Connector) {
    /// if !connector.is_connected().await {
    ///     println!("not connected (yet)");
    /// }
    /// # }
    /// ```
    pub async fn is_connected(&self) -> bool {
        self.current.lock().await.as_ref().is_some_and(|connection| connection.status().connected())
    }

    /// A new channel on the (re)connected connection.
    ///
    /// ```no_run
    /// # async fn run(connector: postroom_client::Connector) -> postroom_client::Result<()> {
    /// let channel = connector.channel().await?;
    /// postroom_client::QueueSpec::new("jobs").declare(&channel).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Connect`] or [`Error::Amqp`].
    pub async fn channel(&self) -> Result<Channel> {
        let connection = self.connection().await?;
        connection.create_channel().await.map_err(Error::amqp("channel.open"))
    }

    /// Closes the connection (if open). A later call to [`connection`](Self::connection)
    /// opens a new one.
    ///
    /// ```no_run
    /// # async fn run(connector: postroom_client::Connector) {
    /// connector.close().await;
    /// # }
    /// ```
    pub async fn close(&self) {
        if let Some(connection) = self.current.lock().await.take()
            && connection.status().connected()
        {
            // Already closing or closed by the peer: nothing left to release.
            let _ = connection.close(200, "bye".into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_stays_at_the_cap() {
        let backoff = Backoff { jitter: 0.0, ..Backoff::default() };
        let delays: Vec<u128> = (1..=9).map(|n| backoff.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn jitter_keeps_the_delay_within_its_fraction() {
        let backoff = Backoff { jitter: 0.5, ..Backoff::default() };
        for _ in 0..200 {
            let delay = backoff.delay(3).as_millis();
            assert!((200..=600).contains(&delay), "{delay}");
        }
    }

    #[test]
    fn invalid_backoffs_are_refused_with_the_field_named() {
        let bad = [
            (Backoff { multiplier: 0.5, ..Backoff::default() }, "multiplier"),
            (Backoff { jitter: 2.0, ..Backoff::default() }, "jitter"),
            (Backoff { max: Duration::ZERO, ..Backoff::default() }, "max"),
            (Backoff { max_attempts: Some(0), ..Backoff::default() }, "max_attempts"),
        ];
        for (backoff, field) in bad {
            let error = backoff.validate().unwrap_err().to_string();
            assert!(error.contains(field), "{error}");
        }
    }

    #[tokio::test]
    async fn connecting_to_a_closed_port_gives_up_after_max_attempts() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let backoff = Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
            max_attempts: Some(3),
            ..Backoff::default()
        };
        let connector =
            Connector::new(format!("amqp://guest:guest@127.0.0.1:{port}/%2f"), backoff).unwrap();
        let error = connector.connection().await.unwrap_err();
        assert!(matches!(error, Error::Connect { attempts: 3, .. }), "{error}");
    }
}
