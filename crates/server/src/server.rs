//! Binding the listeners, accepting connections, and shutting down.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postroom_core::{Broker, BrokerError, read_due};
use postroom_store::{FileStore, Store, StoreError};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::alarm::{self, Alarms};
use crate::config::{ConfigError, ServerConfig};
use crate::{Shared, connection, http};

/// How long shutdown waits for connections to close before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened (I/O error, or damage that needs
    /// `--recover-skip-corrupt`).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// What the store holds could not be restored.
    #[error("restoring the broker state: {0}")]
    Restore(#[from] BrokerError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A running broker. Dropping it without [`Server::shutdown`] leaves its tasks running
/// until the runtime ends.
pub struct Server {
    shared: Arc<Shared>,
    amqp_addr: SocketAddr,
    http_addr: SocketAddr,
    stop: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Validates the settings, binds both listeners and starts accepting.
    ///
    /// # Errors
    /// [`ServerError`] for invalid settings or an address that cannot be bound.
    pub async fn start(config: ServerConfig) -> Result<Server, ServerError> {
        config.validate()?;
        let bind = |addr: SocketAddr| async move {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })?;
            let bound =
                listener.local_addr().map_err(|source| ServerError::Bind { addr, source })?;
            Ok::<_, ServerError>((listener, bound))
        };
        let (amqp, amqp_addr) = bind(config.amqp_listen).await?;
        let (http, http_addr) = bind(config.http_listen).await?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let store: Arc<dyn Store> =
            Arc::new(FileStore::open(&config.data_dir, config.store_config())?);
        let mut broker = Broker::new(seed, store.clone());
        broker.set_memory_limits(postroom_core::backlog::MemoryLimits {
            queue: config.queue_memory_limit,
            total: config.message_memory_limit,
        });
        for vhost in &config.vhosts {
            broker.add_vhost(vhost);
        }
        let recovered = store.take_recovered();
        let summary = broker.restore(recovered)?;
        tracing::info!(
            exchanges = summary.exchanges,
            queues = summary.queues,
            bindings = summary.bindings,
            messages = summary.messages,
            "recovered"
        );
        let alarms = Arc::new(Alarms::new(config.disk_free_limit));
        let data_dir = config.data_dir.clone();
        let shared = Arc::new(Shared { broker: Mutex::new(broker), config, store, alarms });
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(alarm::watch_disk(shared.alarms.clone(), data_dir, stopped.clone()));
        tokio::spawn(http::serve(http, stopped.clone()));
        tokio::spawn(resume_waiting_queues(shared.clone()));
        tokio::spawn(tick(shared.clone(), stopped.clone()));
        let accept = tokio::spawn(accept_loop(shared.clone(), amqp, stopped));
        Ok(Server { shared, amqp_addr, http_addr, stop, accept })
    }

    /// The bound AMQP address (with the real port when port 0 was asked for).
    pub fn amqp_addr(&self) -> SocketAddr {
        self.amqp_addr
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Changes the free disk space under which publishers are blocked; applied at the next
    /// check (within [`alarm::CHECK_EVERY`]).
    pub fn set_disk_free_limit(&self, bytes: u64) {
        self.shared.alarms.set_disk_free_limit(bytes);
    }

    /// Stops accepting, closes every connection with `CONNECTION_FORCED` and waits (up to a
    /// grace period) for them to finish.
    /// Then the store writes and syncs what it holds and closes its files.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.accept.await;
        let store = self.shared.store.clone();
        let closed = tokio::task::spawn_blocking(move || store.close()).await;
        if let Ok(Err(error)) = closed {
            tracing::error!(%error, "closing the store");
        }
    }
}

/// Queues whose next messages were not yet written when a consumer wanted them deliver
/// as soon as the store has written more.
async fn resume_waiting_queues(shared: Arc<Shared>) {
    let mut progress = shared.store.progress();
    while progress.changed().await.is_ok() {
        shared.lock().resume_waiting();
    }
}

/// How often scheduled work (retry backoff, TTLs, delayed messages) is looked at: the
/// precision of those delays.
const TICK: std::time::Duration = std::time::Duration::from_millis(10);

/// Drives the broker's timers until shutdown. A round of delayed releases reads the due
/// messages back from the store between two short holds of the broker lock (take, read,
/// release: see `postroom_core::read_due`), so publishers and consumers are not held up by
/// that disk I/O. The read runs on tokio's blocking pool: it is synchronous I/O that may
/// take milliseconds, which must not occupy a worker thread that connections need, and
/// unlike `block_in_place` it also works on a current-thread runtime (the tests' brokers).
/// Rounds follow one another (the next is taken once this one is released), as
/// `take_due_delayed` requires. A round that took all a round may leaves more due: the
/// next starts at once instead of at the next tick, so a burst drains in rounds of a few
/// milliseconds of lock each, with the reads in between.
async fn tick(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut more_due = false;
    loop {
        if !more_due {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stopped.changed() => return,
            }
        } else if *stopped.borrow() {
            return;
        }
        let round = {
            let mut broker = shared.lock();
            broker.tick_timers();
            broker.take_due_delayed()
        };
        more_due = round.is_full();
        if round.is_empty() {
            continue;
        }
        let store = shared.store.clone();
        match tokio::task::spawn_blocking(move || read_due(&*store, round)).await {
            Ok(read) => shared.lock().release_read(read),
            // A panic, or the runtime shutting down: the round's messages stay in the
            // store, released after a restart.
            Err(error) => tracing::error!(%error, "reading due delayed messages"),
        }
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    connections.spawn(connection::serve(shared.clone(), socket, peer, stopped.clone()));
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stopped.changed() => break,
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        connections.abort_all();
    }
}
