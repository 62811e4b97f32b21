//! Products in SQLite, and the unit of work that saves the products it handed out and
//! collects their events (the repository's "seen" set of the seeds).

use std::path::Path;
use std::sync::Arc;

use postroom_bus::{BusError, Event, SqliteUnitOfWork, UnitOfWork};
use postroom_client::Envelope;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::Notify;

use super::domain::{Batch, OrderLine, Product};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS products (sku TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    reference TEXT PRIMARY KEY, sku TEXT NOT NULL, eta INTEGER, purchased INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS allocations (
    order_id TEXT NOT NULL, sku TEXT NOT NULL, qty INTEGER NOT NULL, batch_ref TEXT NOT NULL,
    PRIMARY KEY (order_id, sku));
";

fn load(connection: &Connection, sku: &str) -> Result<Option<Product>, BusError> {
    let version: Option<u32> = connection
        .query_row("SELECT version FROM products WHERE sku = ?1", [sku], |row| row.get(0))
        .optional()?;
    let Some(version) = version else { return Ok(None) };
    let mut batches: Vec<Batch> = connection
        .prepare_cached(
            "SELECT reference, eta, purchased FROM batches WHERE sku = ?1 ORDER BY reference",
        )?
        .query_map([sku], |row| {
            Ok(Batch {
                reference: row.get(0)?,
                sku: sku.to_string(),
                eta: row.get(1)?,
                purchased: row.get(2)?,
                allocations: Vec::new(),
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut statement = connection.prepare_cached(
        "SELECT order_id, qty, batch_ref FROM allocations WHERE sku = ?1 ORDER BY rowid",
    )?;
    let lines = statement.query_map([sku], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, u32>(1)?, row.get::<_, String>(2)?))
    })?;
    for line in lines {
        let (order_id, qty, batch_ref) = line?;
        if let Some(batch) = batches.iter_mut().find(|batch| batch.reference == batch_ref) {
            batch.allocations.push(OrderLine { order_id, sku: sku.to_string(), qty });
        }
    }
    Ok(Some(Product::new(sku, batches, version)))
}

fn save(connection: &Connection, product: &Product) -> Result<(), BusError> {
    connection.execute(
        "INSERT INTO products (sku, version) VALUES (?1, ?2)
         ON CONFLICT (sku) DO UPDATE SET version = excluded.version",
        params![product.sku, product.version],
    )?;
    connection.execute("DELETE FROM allocations WHERE sku = ?1", [&product.sku])?;
    for batch in &product.batches {
        connection.execute(
            "INSERT INTO batches (reference, sku, eta, purchased) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (reference) DO UPDATE SET eta = excluded.eta, purchased = excluded.purchased",
            params![batch.reference, batch.sku, batch.eta, batch.purchased],
        )?;
        for line in &batch.allocations {
            connection.execute(
                "INSERT INTO allocations (order_id, sku, qty, batch_ref) VALUES (?1, ?2, ?3, ?4)",
                params![line.order_id, line.sku, line.qty, batch.reference],
            )?;
        }
    }
    Ok(())
}

/// The allocation service's unit of work: a SQLite transaction, the products it loaded,
/// and the outbox.
#[derive(Debug)]
pub struct AllocationUnitOfWork {
    inner: SqliteUnitOfWork,
    seen: Vec<Product>,
}

impl AllocationUnitOfWork {
    /// Opens the database at `path` (tables and outbox created if missing); commits wake
    /// `relay` when given.
    ///
    /// # Errors
    /// [`BusError::Database`].
    pub fn open(path: &Path, relay: Option<Arc<Notify>>) -> Result<AllocationUnitOfWork, BusError> {
        let mut inner = SqliteUnitOfWork::open(path)?;
        inner.connection().execute_batch(SCHEMA)?;
        if let Some(relay) = relay {
            inner = inner.wake_on_commit(relay);
        }
        Ok(AllocationUnitOfWork { inner, seen: Vec::new() })
    }

    /// Starts the work.
    ///
    /// # Errors
    /// [`BusError`] from the database.
    pub fn begin(&mut self) -> Result<(), BusError> {
        self.seen.clear();
        self.inner.begin()
    }

    /// The product `sku`, tracked for saving at commit.
    ///
    /// # Errors
    /// [`BusError::Database`].
    pub fn get(&mut self, sku: &str) -> Result<Option<&mut Product>, BusError> {
        if let Some(index) = self.seen.iter().position(|product| product.sku == sku) {
            return Ok(self.seen.get_mut(index));
        }
        let Some(product) = load(self.inner.connection(), sku)? else { return Ok(None) };
        self.seen.push(product);
        Ok(self.seen.last_mut())
    }

    /// Tracks a new product.
    pub fn add(&mut self, product: Product) -> &mut Product {
        self.seen.push(product);
        let last = self.seen.len() - 1;
        &mut self.seen[last]
    }

    /// The product that owns batch `reference`.
    ///
    /// # Errors
    /// [`BusError::Database`].
    pub fn sku_of_batch(&self, reference: &str) -> Result<Option<String>, BusError> {
        Ok(self
            .inner
            .connection()
            .query_row("SELECT sku FROM batches WHERE reference = ?1", [reference], |row| {
                row.get(0)
            })
            .optional()?)
    }

    /// Names the message being handled (for the outgoing events' causation).
    pub fn set_cause(&mut self, cause: Option<Envelope>) {
        self.inner.set_cause(cause);
    }

    /// The batch reference of `order_id`'s line of `sku`, if allocated (read outside any
    /// work).
    ///
    /// # Errors
    /// [`BusError::Database`].
    pub fn allocation_of(&self, order_id: &str, sku: &str) -> Result<Option<String>, BusError> {
        Ok(self
            .inner
            .connection()
            .query_row(
                "SELECT batch_ref FROM allocations WHERE order_id = ?1 AND sku = ?2",
                [order_id, sku],
                |row| row.get(0),
            )
            .optional()?)
    }
}

impl UnitOfWork for AllocationUnitOfWork {
    async fn commit(&mut self) -> Result<(), BusError> {
        for product in &mut self.seen {
            if let Err(error) = save(self.inner.connection(), product) {
                self.seen.clear();
                self.inner.rollback().await?;
                return Err(error);
            }
            let events: Vec<Box<dyn Event>> = product.take_events();
            self.inner.record_all(events);
        }
        self.seen.clear();
        self.inner.commit().await
    }

    async fn rollback(&mut self) -> Result<(), BusError> {
        self.seen.clear();
        self.inner.rollback().await
    }

    fn collect_new_events(&mut self) -> Vec<Box<dyn Event>> {
        self.inner.collect_new_events()
    }
}
