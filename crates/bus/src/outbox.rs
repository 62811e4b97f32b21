//! The transactional outbox in SQLite: events are rows of `postroom_outbox`, written in the
//! same transaction as the state change they describe, and read back in insertion order by
//! the [`OutboxRelay`](crate::OutboxRelay).
//!
//! Each row keeps the envelope it will be published with (message id, correlation and
//! causation ids, trace context), so a row published twice (a crash between the broker's
//! confirm and the row's `sent_at`) carries the same `message_id` both times.
//!
//! A row the broker keeps refusing is *parked* (`parked_at`): it and every later row of
//! its aggregate stop going out, so that one poison row neither blocks the other aggregates
//! nor lets its own aggregate's events overtake it. [`parked`] lists them and [`unpark`]
//! sends one (and its aggregate) on again once the cause is fixed.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postroom_client::{Envelope, TraceContext};
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::BusError;
use crate::message::ExternalEvent;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS postroom_outbox (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id     TEXT    NOT NULL UNIQUE,
    aggregate_id   TEXT    NOT NULL,
    exchange       TEXT    NOT NULL,
    routing_key    TEXT    NOT NULL,
    message_type   TEXT    NOT NULL,
    content_type   TEXT    NOT NULL,
    correlation_id TEXT,
    causation_id   TEXT,
    traceparent    TEXT,
    payload        BLOB    NOT NULL,
    created_at     INTEGER NOT NULL,
    sent_at        INTEGER,
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    parked_at      INTEGER
);
CREATE INDEX IF NOT EXISTS postroom_outbox_unsent ON postroom_outbox (id) WHERE sent_at IS NULL;
";

/// Added after the first release: databases created before it get the column by migration.
const PARKED: &str = "
CREATE INDEX IF NOT EXISTS postroom_outbox_parked ON postroom_outbox (aggregate_id)
    WHERE parked_at IS NOT NULL AND sent_at IS NULL;
";

/// AMQP short strings (exchange, routing key, `type` and `content_type` properties) hold at
/// most this many bytes.
const SHORT_STRING_MAX: usize = 255;

/// Opens (creating if needed) a SQLite database for an application with an outbox: WAL
/// journal (so the relay reads while the application writes), a 5 s busy timeout, and the
/// outbox table.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let connection = postroom_bus::outbox::open(&dir.path().join("app.db")).unwrap();
/// assert_eq!(postroom_bus::outbox::unsent_count(&connection).unwrap(), 0);
/// ```
///
/// # Errors
/// [`BusError::Database`] when the file cannot be opened or the schema created.
pub fn open(path: &Path) -> Result<Connection, BusError> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(Duration::from_secs(5))?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    // WAL with synchronous=FULL makes every commit durable, as the outbox promises.
    connection.pragma_update(None, "synchronous", "FULL")?;
    create_schema(&connection)?;
    Ok(connection)
}

/// Creates the outbox table in an existing database (idempotent).
///
/// ```
/// let connection = rusqlite::Connection::open_in_memory().unwrap();
/// postroom_bus::outbox::create_schema(&connection).unwrap();
/// postroom_bus::outbox::create_schema(&connection).unwrap(); // idempotent
/// ```
///
/// # Errors
/// [`BusError::Database`].
pub fn create_schema(connection: &Connection) -> Result<(), BusError> {
    connection.execute_batch(SCHEMA)?;
    let has_parked: bool = connection.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('postroom_outbox') WHERE name = 'parked_at'",
        [],
        |row| row.get(0),
    )?;
    if !has_parked {
        connection.execute_batch("ALTER TABLE postroom_outbox ADD COLUMN parked_at INTEGER")?;
    }
    connection.execute_batch(PARKED)?;
    Ok(())
}

/// Writes `event` to the outbox on `connection`, which should be inside the transaction of
/// the state change. `cause` (the message being handled) gives the correlation and
/// causation ids; the trace context is the current span's, else the cause's. Returns the
/// message id the event will be published with.
///
/// ```
/// let connection = rusqlite::Connection::open_in_memory().unwrap();
/// postroom_bus::outbox::create_schema(&connection).unwrap();
/// # let event = postroom_bus::ExternalEvent::json(&Ping, "agg-1").unwrap();
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
/// # impl postroom_client::Message for Ping {
/// #     const EXCHANGE: &'static str = "e"; const MESSAGE_TYPE: &'static str = "ping";
/// #     fn routing_key(&self) -> std::borrow::Cow<'_, str> { "k".into() }
/// # }
/// connection.execute_batch("BEGIN").unwrap();
/// // … the state change on the same connection …
/// postroom_bus::outbox::append(&connection, &event, None).unwrap();
/// connection.execute_batch("COMMIT").unwrap();
/// ```
///
/// # Errors
/// [`BusError::Encode`] when a field cannot travel in AMQP (an exchange, routing key, type
/// or content type over 255 bytes): refused here, in the application's transaction, rather
/// than written as a row that no publish could ever send. [`BusError::Database`].
pub fn append(
    connection: &Connection,
    event: &ExternalEvent,
    cause: Option<&Envelope>,
) -> Result<String, BusError> {
    for (field, value) in [
        ("exchange", &event.exchange),
        ("routing key", &event.routing_key),
        ("message type", &event.message_type),
        ("content type", &event.content_type),
    ] {
        if value.len() > SHORT_STRING_MAX {
            return Err(BusError::Encode {
                message_type: event.message_type.chars().take(64).collect(),
                message: format!(
                    "its {field} is {} bytes; AMQP allows at most {SHORT_STRING_MAX}",
                    value.len()
                ),
            });
        }
    }
    let envelope = match cause {
        Some(cause) => Envelope::caused_by(cause),
        None => Envelope::new(),
    };
    let traceparent = TraceContext::current()
        .map(|context| context.to_traceparent())
        .or(envelope.traceparent.clone());
    connection.execute(
        "INSERT INTO postroom_outbox (message_id, aggregate_id, exchange, routing_key,
             message_type, content_type, correlation_id, causation_id, traceparent, payload,
             created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            envelope.message_id,
            event.aggregate_id,
            event.exchange,
            event.routing_key,
            event.message_type,
            event.content_type,
            envelope.correlation_id,
            envelope.causation_id,
            traceparent,
            event.payload,
            now_seconds(),
        ],
    )?;
    Ok(envelope.message_id)
}

/// One outbox row.
///
/// ```
/// let connection = rusqlite::Connection::open_in_memory().unwrap();
/// postroom_bus::outbox::create_schema(&connection).unwrap();
/// assert!(postroom_bus::outbox::unsent(&connection, 10).unwrap().is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxRecord {
    /// Insertion order.
    pub id: i64,
    /// The id it is published with.
    pub message_id: String,
    /// The aggregate it belongs to.
    pub aggregate_id: String,
    /// Where it goes.
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// Its type name.
    pub message_type: String,
    /// The body's MIME type.
    pub content_type: String,
    /// The conversation it belongs to.
    pub correlation_id: Option<String>,
    /// The message that caused it.
    pub causation_id: Option<String>,
    /// The trace it was raised in.
    pub traceparent: Option<String>,
    /// The body.
    pub payload: Vec<u8>,
    /// When it was written (seconds since the epoch).
    pub created_at: u64,
    /// Failed publish attempts so far.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

impl OutboxRecord {
    /// The envelope to publish the record with.
    ///
    /// ```
    /// let connection = rusqlite::Connection::open_in_memory().unwrap();
    /// postroom_bus::outbox::create_schema(&connection).unwrap();
    /// # let event = postroom_bus::ExternalEvent::json(&Ping, "agg-1").unwrap();
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
    /// # impl postroom_client::Message for Ping {
    /// #     const EXCHANGE: &'static str = "e"; const MESSAGE_TYPE: &'static str = "ping";
    /// #     fn routing_key(&self) -> std::borrow::Cow<'_, str> { "k".into() }
    /// # }
    /// let id = postroom_bus::outbox::append(&connection, &event, None).unwrap();
    /// let record = postroom_bus::outbox::unsent(&connection, 1).unwrap().remove(0);
    /// assert_eq!(record.envelope().message_id, id);
    /// ```
    pub fn envelope(&self) -> Envelope {
        let mut envelope = Envelope::new().with_message_id(self.message_id.clone());
        envelope.timestamp = Some(self.created_at);
        envelope.message_type = Some(self.message_type.clone());
        envelope.content_type = Some(self.content_type.clone());
        envelope.correlation_id.clone_from(&self.correlation_id);
        envelope.causation_id.clone_from(&self.causation_id);
        envelope.traceparent.clone_from(&self.traceparent);
        envelope
    }
}

/// Up to `limit` records to publish, oldest first: unsent, not parked, and not of an
/// aggregate with a parked record (those wait for [`unpark`]).
///
/// ```
/// let connection = rusqlite::Connection::open_in_memory().unwrap();
/// postroom_bus::outbox::create_schema(&connection).unwrap();
/// # let event = postroom_bus::ExternalEvent::json(&Ping, "agg-1").unwrap();
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
/// # impl postroom_client::Message for Ping {
/// #     const EXCHANGE: &'static str = "e"; const MESSAGE_TYPE: &'static str = "ping";
/// #     fn routing_key(&self) -> std::borrow::Cow<'_, str> { "k".into() }
/// # }
/// postroom_bus::outbox::append(&connection, &event, None).unwrap();
/// let batch = postroom_bus::outbox::unsent(&connection, 100).unwrap();
/// assert_eq!(batch[0].aggregate_id, "agg-1");
/// ```
///
/// # Errors
/// [`BusError::Database`].
pub fn unsent(connection: &Connection, limit: usize) -> Result<Vec<OutboxRecord>, BusError> {
    let mut statement = connection.prepare_cached(
        "SELECT id, message_id, aggregate_id, exchange, routing_key, message_type, content_type,
                correlation_id, causation_id, traceparent, payload, created_at, attempts,
                last_error
         FROM postroom_outbox
         WHERE sent_at IS NULL AND parked_at IS NULL
           AND aggregate_id NOT IN (SELECT aggregate_id FROM postroom_outbox
                                    WHERE parked_at IS NOT NULL AND sent_at IS NULL)
         ORDER BY id LIMIT ?1",
    )?;
    records(&mut statement, limit)
}

/// The parked records, oldest first: each stops its aggregate until [`unpark`]ed.
///
/// ```
/// let connection = rusqlite::Connection::open_in_memory().unwrap();
/// postroom_bus::outbox::create_schema(&connection).unwrap();
/// # let event = postroom_bus::ExternalEvent::json(&Ping, "agg-1").unwrap();
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
/// # impl postroom_client::Message for Ping {
/// #     const EXCHANGE: &'static str = "e"; const MESSAGE_TYPE: &'static str = "ping";
/// #     fn routing_key(&self) -> std::borrow::Cow<'_, str> { "k".into() }
/// # }
/// postroom_bus::outbox::append(&connection, &event, None).unwrap();
/// let record = postroom_bus::outbox::unsent(&connection, 1).unwrap().remove(0);
/// postroom_bus::outbox::park(&connection, record.id, "404 no exchange 'e'").unwrap();
/// let parked = postroom_bus::outbox::parked(&connection, 10).unwrap();
/// assert_eq!(parked[0].last_error.as_deref(), Some("404 no exchange 'e'"));
/// assert!(postroom_bus::outbox::unsent(&connection, 10).unwrap().is_empty());
/// ```
///
/// # Errors
/// [`BusError::Database`].
pub fn parked(connection: &Connection, limit: usize) -> Result<Vec<OutboxRecord>, BusError> {
    let mut statement = connection.prepare_cached(
        "SELECT id, message_id, aggregate_id, exchange, routing_key, message_type, content_type,
                correlation_id, causation_id, traceparent, payload, created_at, attempts,
                last_error
         FROM postroom_outbox WHERE sent_at IS NULL AND parked_at IS NOT NULL
         ORDER BY id LIMIT ?1",
    )?;
    records(&mut statement, limit)
}

fn records(
    statement: &mut rusqlite::CachedStatement<'_>,
    limit: usize,
) -> Result<Vec<OutboxRecord>, BusError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = statement.query_map([limit], |row| {
        Ok(OutboxRecord {
            id: row.get(0)?,
            message_id: row.get(1)?,
            aggregate_id: row.get(2)?,
            exchange: row.get(3)?,
            routing_key: row.get(4)?,
            message_type: row.get(5)?,
            content_type: row.get(6)?,
            correlation_id: row.get(7)?,
            causation_id: row.get(8)?,
            traceparent: row.get(9)?,
            payload: row.get(10)?,
            created_at: u64::try_from(row.get::<_, i64>(11)?).unwrap_or(0),
            attempts: row.get(12)?,
            last_error: row.get(13)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Marks a record published.
///
/// ```
/// let connection = rusqlite::Connection::open_in_memory().unwrap();
/// postroom_bus::outbox::create_schema(&connection).unwrap();
/// # let event = postroom_bus::ExternalEvent::json(&Ping, "agg-1").unwrap();
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
/// # impl postroom_client::Message for Ping {
/// #     const EXCHANGE: &'static str = "e"; const MESSAGE_TYPE: &'static str = "ping";
/// #     fn routing_key(&self) -> std::borrow::Cow<'_, str> { "k".into() }
/// # }
/// postroom_bus::outbox::append(&connection, &event, None).unwrap();
/// let record = postroom_bus::outbox::unsent(&connection, 1).unwrap().remove(0);
/// postroom_bus::outbox::mark_sent(&connection, record.id).unwrap();
/// assert_eq!(postroom_bus::outbox::unsent_count(&connection).unwrap(), 0);
/// ```
///
/// # Errors
/// [`BusError::Database`].
pub fn mark_sent(connection: &Connection, id: i64) -> Result<(), BusError> {
    connection.execute(
        "UPDATE postroom_outbox SET sent_at = ?2, last_error = NULL WHERE id = ?1",
        params![id, now_seconds()],
    )?;
    Ok(())
}

/// Records a failed publish of a record.
///
/// ```
/// let connection = rusqlite::Connection::open_in_memory().unwrap();
/// postroom_bus::outbox::create_schema(&connection).unwrap();
/// # let event = postroom_bus::ExternalEvent::json(&Ping, "agg-1").unwrap();
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
/// # impl postroom_client::Message for Ping {
/// #     const EXCHANGE: &'static str = "e"; const MESSAGE_TYPE: &'static str = "ping";
/// #     fn routing_key(&self) -> std::borrow::Cow<'_, str> { "k".into() }
/// # }
/// postroom_bus::outbox::append(&connection, &event, None).unwrap();
/// let record = postroom_bus::outbox::unsent(&connection, 1).unwrap().remove(0);
/// postroom_bus::outbox::mark_failed(&connection, record.id, "broker down").unwrap();
/// assert_eq!(postroom_bus::outbox::unsent(&connection, 1).unwrap()[0].attempts, 1);
/// ```
///
/// # Errors
/// [`BusError::Database`].
pub fn mark_failed(connection: &Connection, id: i64, error: &str) -> Result<(), BusError> {
    connection.execute(
        "UPDATE postroom_outbox SET attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
        params![id, error],
    )?;
    Ok(())
}

/// Parks a record after a failed publish: it, and every later record of its aggregate, stop
/// going out until [`unpark`]ed.
///
/// ```
/// let connection = rusqlite::Connection::open_in_memory().unwrap();
/// postroom_bus::outbox::create_schema(&connection).unwrap();
/// # let event = postroom_bus::ExternalEvent::json(&Ping, "agg-1").unwrap();
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
/// # impl postroom_client::Message for Ping {
/// #     const EXCHANGE: &'static str = "e"; const MESSAGE_TYPE: &'static str = "ping";
/// #     fn routing_key(&self) -> std::borrow::Cow<'_, str> { "k".into() }
/// # }
/// postroom_bus::outbox::append(&connection, &event, None).unwrap();
/// let record = postroom_bus::outbox::unsent(&connection, 1).unwrap().remove(0);
/// postroom_bus::outbox::park(&connection, record.id, "unroutable").unwrap();
/// assert_eq!(postroom_bus::outbox::parked(&connection, 10).unwrap()[0].attempts, 1);
/// ```
///
/// # Errors
/// [`BusError::Database`].
pub fn park(connection: &Connection, id: i64, error: &str) -> Result<(), BusError> {
    connection.execute(
        "UPDATE postroom_outbox SET attempts = attempts + 1, last_error = ?2, parked_at = ?3
         WHERE id = ?1",
        params![id, error, now_seconds()],
    )?;
    Ok(())
}

/// Sends a parked record (and so its aggregate) on again, with its attempts reset: for
/// when the cause is fixed (the exchange declared, a queue bound). Returns whether the
/// record was parked.
///
/// ```
/// let connection = rusqlite::Connection::open_in_memory().unwrap();
/// postroom_bus::outbox::create_schema(&connection).unwrap();
/// # let event = postroom_bus::ExternalEvent::json(&Ping, "agg-1").unwrap();
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
/// # impl postroom_client::Message for Ping {
/// #     const EXCHANGE: &'static str = "e"; const MESSAGE_TYPE: &'static str = "ping";
/// #     fn routing_key(&self) -> std::borrow::Cow<'_, str> { "k".into() }
/// # }
/// postroom_bus::outbox::append(&connection, &event, None).unwrap();
/// let record = postroom_bus::outbox::unsent(&connection, 1).unwrap().remove(0);
/// postroom_bus::outbox::park(&connection, record.id, "unroutable").unwrap();
/// assert!(postroom_bus::outbox::unpark(&connection, record.id).unwrap());
/// assert_eq!(postroom_bus::outbox::unsent(&connection, 10).unwrap()[0].attempts, 0);
/// ```
///
/// # Errors
/// [`BusError::Database`].
pub fn unpark(connection: &Connection, id: i64) -> Result<bool, BusError> {
    let changed = connection.execute(
        "UPDATE postroom_outbox SET parked_at = NULL, attempts = 0
         WHERE id = ?1 AND parked_at IS NOT NULL AND sent_at IS NULL",
        [id],
    )?;
    Ok(changed > 0)
}

/// How many records wait to be published (parked ones and their aggregates' included).
///
/// ```
/// let connection = rusqlite::Connection::open_in_memory().unwrap();
/// postroom_bus::outbox::create_schema(&connection).unwrap();
/// assert_eq!(postroom_bus::outbox::unsent_count(&connection).unwrap(), 0);
/// ```
///
/// # Errors
/// [`BusError::Database`].
pub fn unsent_count(connection: &Connection) -> Result<u64, BusError> {
    let count: i64 = connection.query_row(
        "SELECT COUNT(*) FROM postroom_outbox WHERE sent_at IS NULL",
        [],
        |row| row.get(0),
    )?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// When the record with `message_id` was published: `None` when there is no such record,
/// `Some(None)` while it waits, `Some(Some(seconds since the epoch))` once sent.
///
/// ```
/// let connection = rusqlite::Connection::open_in_memory().unwrap();
/// postroom_bus::outbox::create_schema(&connection).unwrap();
/// # let event = postroom_bus::ExternalEvent::json(&Ping, "agg-1").unwrap();
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
/// # impl postroom_client::Message for Ping {
/// #     const EXCHANGE: &'static str = "e"; const MESSAGE_TYPE: &'static str = "ping";
/// #     fn routing_key(&self) -> std::borrow::Cow<'_, str> { "k".into() }
/// # }
/// let id = postroom_bus::outbox::append(&connection, &event, None).unwrap();
/// assert_eq!(postroom_bus::outbox::sent_at(&connection, &id).unwrap(), Some(None));
/// ```
///
/// # Errors
/// [`BusError::Database`].
pub fn sent_at(connection: &Connection, message_id: &str) -> Result<Option<Option<i64>>, BusError> {
    Ok(connection
        .query_row(
            "SELECT sent_at FROM postroom_outbox WHERE message_id = ?1",
            [message_id],
            |row| row.get(0),
        )
        .optional()?)
}

/// Deletes records published more than `age` ago; returns how many.
///
/// ```
/// let connection = rusqlite::Connection::open_in_memory().unwrap();
/// postroom_bus::outbox::create_schema(&connection).unwrap();
/// assert_eq!(postroom_bus::outbox::purge_sent(&connection, std::time::Duration::from_secs(86_400)).unwrap(), 0);
/// ```
///
/// # Errors
/// [`BusError::Database`].
pub fn purge_sent(connection: &Connection, age: Duration) -> Result<usize, BusError> {
    let cutoff = now_seconds().saturating_sub(i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
    Ok(connection.execute(
        "DELETE FROM postroom_outbox WHERE sent_at IS NOT NULL AND sent_at <= ?1",
        [cutoff],
    )?)
}

/// Seconds since the epoch, as SQLite stores integers.
fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(aggregate: &str, body: &str) -> ExternalEvent {
        ExternalEvent {
            exchange: "e".into(),
            routing_key: "k".into(),
            message_type: "t".into(),
            aggregate_id: aggregate.into(),
            content_type: "application/json".into(),
            payload: body.as_bytes().to_vec(),
        }
    }

    fn memory() -> Connection {
        let connection = Connection::open_in_memory().unwrap();
        create_schema(&connection).unwrap();
        connection
    }

    #[test]
    fn records_come_back_in_insertion_order_until_marked_sent() {
        let connection = memory();
        for n in 0..5 {
            append(&connection, &event("a", &n.to_string()), None).unwrap();
        }
        let first = unsent(&connection, 3).unwrap();
        let bodies: Vec<_> = first.iter().map(|r| r.payload.clone()).collect();
        assert_eq!(bodies, [b"0".to_vec(), b"1".to_vec(), b"2".to_vec()]);
        mark_sent(&connection, first[0].id).unwrap();
        mark_failed(&connection, first[1].id, "broker down").unwrap();
        let next = unsent(&connection, 10).unwrap();
        assert_eq!(next.len(), 4);
        assert_eq!((next[0].payload.as_slice(), next[0].attempts), (&b"1"[..], 1));
        assert_eq!(unsent_count(&connection).unwrap(), 4);
    }

    // Regression: an over-long routing key was written, and its row failed every publish
    // for ever (AMQP short strings hold 255 bytes).
    #[test]
    fn an_event_that_cannot_travel_in_amqp_is_refused_at_append() {
        let connection = memory();
        let mut long = event("a", "x");
        long.routing_key = "k".repeat(256);
        let refused = append(&connection, &long, None);
        assert!(
            matches!(&refused, Err(BusError::Encode { message, .. }) if message.contains("routing key is 256 bytes")),
            "{refused:?}"
        );
        long.routing_key = "k".repeat(255);
        append(&connection, &long, None).unwrap();
        assert_eq!(unsent_count(&connection).unwrap(), 1);
    }

    #[test]
    fn a_parked_record_stops_its_aggregate_until_unparked() {
        let connection = memory();
        for (aggregate, body) in [("a", "a1"), ("b", "b1"), ("a", "a2")] {
            append(&connection, &event(aggregate, body), None).unwrap();
        }
        let first = unsent(&connection, 10).unwrap();
        park(&connection, first[0].id, "404").unwrap();
        let bodies = |records: Vec<OutboxRecord>| -> Vec<Vec<u8>> {
            records.into_iter().map(|record| record.payload).collect()
        };
        assert_eq!(bodies(unsent(&connection, 10).unwrap()), [b"b1".to_vec()]);
        assert_eq!(bodies(parked(&connection, 10).unwrap()), [b"a1".to_vec()]);
        assert!(unpark(&connection, first[0].id).unwrap());
        assert!(!unpark(&connection, first[0].id).unwrap(), "no longer parked");
        assert_eq!(
            bodies(unsent(&connection, 10).unwrap()),
            [b"a1".to_vec(), b"b1".to_vec(), b"a2".to_vec()]
        );
    }

    #[test]
    fn a_database_from_before_parking_gets_the_column() {
        let connection = Connection::open_in_memory().unwrap();
        connection
            .execute_batch(
                &SCHEMA.replace(
                    "last_error     TEXT,\n    parked_at      INTEGER",
                    "last_error     TEXT",
                ),
            )
            .unwrap();
        append(&connection, &event("a", "old"), None).unwrap();
        assert!(unsent(&connection, 10).is_err(), "the old table has no parked_at");
        create_schema(&connection).unwrap();
        append(&connection, &event("a", "new"), None).unwrap();
        assert_eq!(unsent(&connection, 10).unwrap().len(), 2);
    }

    #[test]
    fn a_rolled_back_transaction_leaves_no_record() {
        let connection = memory();
        connection.execute_batch("BEGIN").unwrap();
        append(&connection, &event("a", "x"), None).unwrap();
        connection.execute_batch("ROLLBACK").unwrap();
        assert_eq!(unsent_count(&connection).unwrap(), 0);
    }

    #[test]
    fn the_cause_gives_correlation_and_causation() {
        let connection = memory();
        let cause = Envelope::new().with_correlation_id("c-1");
        let id = append(&connection, &event("a", "x"), Some(&cause)).unwrap();
        let record = unsent(&connection, 1).unwrap().remove(0);
        let envelope = record.envelope();
        assert_eq!(envelope.message_id, id);
        assert_eq!(envelope.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(envelope.causation_id.as_deref(), Some(cause.message_id.as_str()));
    }

    #[test]
    fn purging_removes_only_sent_records() {
        let connection = memory();
        append(&connection, &event("a", "1"), None).unwrap();
        let id = append(&connection, &event("a", "2"), None).unwrap();
        mark_sent(&connection, unsent(&connection, 1).unwrap()[0].id).unwrap();
        assert_eq!(purge_sent(&connection, Duration::ZERO).unwrap(), 1);
        assert_eq!(unsent_count(&connection).unwrap(), 1);
        assert_eq!(sent_at(&connection, &id).unwrap(), Some(None));
    }
}
