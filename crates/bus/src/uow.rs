//! The unit of work: one atomic change of state, and the events it raised.
//!
//! Events are *recorded* while the work is open (by aggregates, through the application's
//! repository, or directly), *written* to the outbox by `commit` inside the same
//! transaction when they leave the service, and *handed to the bus* only once committed:
//! rolled-back work raises nothing.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use postroom_client::Envelope;
use rusqlite::Connection;
use tokio::sync::Notify;

use crate::error::BusError;
use crate::message::Event;
use crate::outbox;

/// An atomic change of state that collects the events it raised.
///
/// Contract: [`collect_new_events`](UnitOfWork::collect_new_events) returns (and forgets)
/// the events of work committed since it was last called, in the order they were raised;
/// events of rolled-back work are never returned.
///
/// ```
/// use postroom_bus::{InMemoryUnitOfWork, UnitOfWork};
/// # #[derive(Debug)] struct Happened;
/// # impl postroom_bus::Event for Happened { fn name(&self) -> &'static str { "Happened" } }
/// # futures_lite::future::block_on(async {
/// let mut uow = InMemoryUnitOfWork::default();
/// uow.record(Happened);
/// uow.rollback().await.unwrap();
/// assert!(uow.collect_new_events().is_empty());
/// uow.record(Happened);
/// uow.commit().await.unwrap();
/// assert_eq!(uow.collect_new_events().len(), 1);
/// # });
/// ```
pub trait UnitOfWork: Send {
    /// Makes the work durable, the outbox rows of its external events included.
    ///
    /// # Errors
    /// [`BusError::Database`] (the work is then rolled back).
    fn commit(&mut self) -> impl Future<Output = Result<(), BusError>> + Send;

    /// Abandons the work and its events.
    ///
    /// # Errors
    /// [`BusError::Database`].
    fn rollback(&mut self) -> impl Future<Output = Result<(), BusError>> + Send;

    /// The events of committed work not yet collected.
    fn collect_new_events(&mut self) -> Vec<Box<dyn Event>>;
}

/// A unit of work with no storage: commits only release the recorded events. For tests and
/// for services whose state lives elsewhere.
///
/// ```
/// use postroom_bus::{InMemoryUnitOfWork, UnitOfWork};
/// let mut uow = InMemoryUnitOfWork::default();
/// assert!(uow.collect_new_events().is_empty());
/// ```
#[derive(Debug, Default)]
pub struct InMemoryUnitOfWork {
    pending: Vec<Box<dyn Event>>,
    committed: Vec<Box<dyn Event>>,
    names: Vec<&'static str>,
    commits: usize,
}

impl InMemoryUnitOfWork {
    /// Records an event of the open work.
    ///
    /// ```
    /// # #[derive(Debug)] struct Happened;
    /// # impl postroom_bus::Event for Happened { fn name(&self) -> &'static str { "Happened" } }
    /// let mut uow = postroom_bus::InMemoryUnitOfWork::default();
    /// uow.record(Happened);
    /// ```
    pub fn record(&mut self, event: impl Event) {
        self.pending.push(Box::new(event));
    }

    /// How many times the work was committed.
    ///
    /// ```
    /// use postroom_bus::{InMemoryUnitOfWork, UnitOfWork};
    /// let mut uow = InMemoryUnitOfWork::default();
    /// futures_lite::future::block_on(uow.commit()).unwrap();
    /// assert_eq!(uow.commits(), 1);
    /// ```
    pub fn commits(&self) -> usize {
        self.commits
    }

    /// The names of every event committed so far, in order.
    ///
    /// ```
    /// # #[derive(Debug)] struct Happened;
    /// # impl postroom_bus::Event for Happened { fn name(&self) -> &'static str { "Happened" } }
    /// use postroom_bus::{InMemoryUnitOfWork, UnitOfWork};
    /// let mut uow = InMemoryUnitOfWork::default();
    /// uow.record(Happened);
    /// futures_lite::future::block_on(uow.commit()).unwrap();
    /// assert_eq!(uow.committed_event_names(), ["Happened"]);
    /// ```
    pub fn committed_event_names(&self) -> &[&'static str] {
        &self.names
    }
}

impl UnitOfWork for InMemoryUnitOfWork {
    async fn commit(&mut self) -> Result<(), BusError> {
        self.commits += 1;
        self.names.extend(self.pending.iter().map(|event| event.name()));
        self.committed.append(&mut self.pending);
        Ok(())
    }

    async fn rollback(&mut self) -> Result<(), BusError> {
        self.pending.clear();
        Ok(())
    }

    fn collect_new_events(&mut self) -> Vec<Box<dyn Event>> {
        std::mem::take(&mut self.committed)
    }
}

/// A unit of work over a SQLite connection with the transactional outbox.
///
/// [`begin`](Self::begin) opens an immediate transaction; the application changes its
/// tables through [`connection`](Self::connection) and records events; `commit` writes the
/// external events to `postroom_outbox` and commits everything at once, then wakes the
/// relay. SQLite calls are synchronous and short; they run on the calling task.
///
/// ```
/// use postroom_bus::{SqliteUnitOfWork, UnitOfWork};
/// # futures_lite::future::block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let mut uow = SqliteUnitOfWork::open(&dir.path().join("app.db")).unwrap();
/// uow.connection().execute_batch("CREATE TABLE t (n INTEGER)").unwrap();
/// uow.begin().unwrap();
/// uow.connection().execute("INSERT INTO t VALUES (1)", []).unwrap();
/// uow.commit().await.unwrap();
/// # });
/// ```
#[derive(Debug)]
pub struct SqliteUnitOfWork {
    connection: Connection,
    pending: Vec<Box<dyn Event>>,
    committed: Vec<Box<dyn Event>>,
    cause: Option<Envelope>,
    relay: Option<Arc<Notify>>,
    open: bool,
}

impl SqliteUnitOfWork {
    /// Opens the database at `path` (see [`outbox::open`]).
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let uow = postroom_bus::SqliteUnitOfWork::open(&dir.path().join("app.db")).unwrap();
    /// # drop(uow);
    /// ```
    ///
    /// # Errors
    /// [`BusError::Database`].
    pub fn open(path: &Path) -> Result<SqliteUnitOfWork, BusError> {
        Ok(SqliteUnitOfWork::from_connection(outbox::open(path)?))
    }

    /// Uses an open connection whose database has the outbox table.
    ///
    /// ```
    /// let connection = rusqlite::Connection::open_in_memory().unwrap();
    /// postroom_bus::outbox::create_schema(&connection).unwrap();
    /// let uow = postroom_bus::SqliteUnitOfWork::from_connection(connection);
    /// # drop(uow);
    /// ```
    pub fn from_connection(connection: Connection) -> SqliteUnitOfWork {
        SqliteUnitOfWork {
            connection,
            pending: Vec::new(),
            committed: Vec::new(),
            cause: None,
            relay: None,
            open: false,
        }
    }

    /// Wakes `relay` after each commit that wrote to the outbox
    /// (see [`OutboxRelay::waker`](crate::OutboxRelay::waker)).
    ///
    /// ```
    /// let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    /// let uow = postroom_bus::SqliteUnitOfWork::from_connection(rusqlite::Connection::open_in_memory().unwrap())
    ///     .wake_on_commit(wake);
    /// # drop(uow);
    /// ```
    pub fn wake_on_commit(mut self, relay: Arc<Notify>) -> SqliteUnitOfWork {
        self.relay = Some(relay);
        self
    }

    /// Names the message being handled, so outgoing events carry its correlation id and
    /// name it as their cause.
    ///
    /// ```
    /// let mut uow = postroom_bus::SqliteUnitOfWork::from_connection(rusqlite::Connection::open_in_memory().unwrap());
    /// uow.set_cause(Some(postroom_client::Envelope::new().with_correlation_id("order-7")));
    /// ```
    pub fn set_cause(&mut self, cause: Option<Envelope>) {
        self.cause = cause;
    }

    /// Opens the transaction (`BEGIN IMMEDIATE`: the write lock is taken now, so the commit
    /// cannot fail on a busy database after the work is done).
    ///
    /// A transaction still open from earlier work, neither committed nor rolled back (its
    /// handler panicked, or returned early outside a bus that rolls back), is rolled back
    /// first with a warning: that work was abandoned, and keeping it open would make every
    /// later `begin` on a long-lived unit of work fail.
    ///
    /// ```
    /// use postroom_bus::{SqliteUnitOfWork, UnitOfWork};
    /// # futures_lite::future::block_on(async {
    /// let connection = rusqlite::Connection::open_in_memory().unwrap();
    /// postroom_bus::outbox::create_schema(&connection).unwrap();
    /// connection.execute_batch("CREATE TABLE t (n INTEGER)").unwrap();
    /// let mut uow = SqliteUnitOfWork::from_connection(connection);
    /// uow.begin().unwrap();
    /// uow.connection().execute("INSERT INTO t VALUES (1)", []).unwrap();
    /// uow.begin().unwrap(); // the abandoned insert is rolled back
    /// uow.commit().await.unwrap();
    /// let rows: i64 = uow.connection().query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
    /// assert_eq!(rows, 0);
    /// # });
    /// ```
    ///
    /// # Errors
    /// [`BusError::Database`].
    pub fn begin(&mut self) -> Result<(), BusError> {
        if self.open {
            tracing::warn!("rolling back a transaction left open by abandoned work");
            self.open = false;
            self.pending.clear();
            self.connection.execute_batch("ROLLBACK")?;
        }
        self.connection.execute_batch("BEGIN IMMEDIATE")?;
        self.open = true;
        self.pending.clear();
        Ok(())
    }

    /// The connection, for the application's repositories.
    ///
    /// ```
    /// let uow = postroom_bus::SqliteUnitOfWork::from_connection(rusqlite::Connection::open_in_memory().unwrap());
    /// uow.connection().execute_batch("CREATE TABLE orders (id TEXT PRIMARY KEY)").unwrap();
    /// ```
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Records an event of the open work.
    ///
    /// ```
    /// # #[derive(Debug)] struct Happened;
    /// # impl postroom_bus::Event for Happened { fn name(&self) -> &'static str { "Happened" } }
    /// let mut uow = postroom_bus::SqliteUnitOfWork::from_connection(rusqlite::Connection::open_in_memory().unwrap());
    /// uow.record(Happened);
    /// ```
    pub fn record(&mut self, event: impl Event) {
        self.pending.push(Box::new(event));
    }

    /// Records events already boxed (e.g. taken from an aggregate).
    ///
    /// ```
    /// # #[derive(Debug)] struct Happened;
    /// # impl postroom_bus::Event for Happened { fn name(&self) -> &'static str { "Happened" } }
    /// let mut uow = postroom_bus::SqliteUnitOfWork::from_connection(rusqlite::Connection::open_in_memory().unwrap());
    /// let events: Vec<Box<dyn postroom_bus::Event>> = vec![Box::new(Happened), Box::new(Happened)];
    /// uow.record_all(events);
    /// ```
    pub fn record_all(&mut self, events: impl IntoIterator<Item = Box<dyn Event>>) {
        self.pending.extend(events);
    }

    fn write_outbox(&self) -> Result<bool, BusError> {
        let mut wrote = false;
        for event in &self.pending {
            if let Some(external) = event.to_external()? {
                outbox::append(&self.connection, &external, self.cause.as_ref())?;
                wrote = true;
            }
        }
        Ok(wrote)
    }
}

impl UnitOfWork for SqliteUnitOfWork {
    async fn commit(&mut self) -> Result<(), BusError> {
        if !self.open {
            return Err(BusError::UnitOfWork("commit without begin"));
        }
        let wrote = match self.write_outbox() {
            Ok(wrote) => wrote,
            Err(error) => {
                self.rollback().await?;
                return Err(error);
            }
        };
        if let Err(error) = self.connection.execute_batch("COMMIT") {
            self.rollback().await?;
            return Err(error.into());
        }
        self.open = false;
        self.committed.append(&mut self.pending);
        if wrote && let Some(relay) = &self.relay {
            relay.notify_one();
        }
        Ok(())
    }

    async fn rollback(&mut self) -> Result<(), BusError> {
        self.pending.clear();
        if self.open {
            self.open = false;
            self.connection.execute_batch("ROLLBACK")?;
        }
        Ok(())
    }

    fn collect_new_events(&mut self) -> Vec<Box<dyn Event>> {
        std::mem::take(&mut self.committed)
    }
}

impl Drop for SqliteUnitOfWork {
    fn drop(&mut self) {
        if self.open {
            // Work neither committed nor rolled back (an early return, a panic) is abandoned.
            let _ = self.connection.execute_batch("ROLLBACK");
        }
    }
}
