//! The message bus over a long-lived `SqliteUnitOfWork` (one unit of work serving every
//! command, as the allocation service keeps it behind a mutex): a handler that fails or
//! panics in the middle of its work must not leave the transaction open for the next one.

use futures_lite::FutureExt;
use postroom_bus::{BusError, Command, CommandHandler, Event, EventHandler, MessageBus};
use postroom_bus::{SqliteUnitOfWork, UnitOfWork};

/// Inserts `sku` in its own work, then fails, panics or commits as `how` says.
#[derive(Debug)]
struct Stock {
    sku: &'static str,
    how: How,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum How {
    Commit,
    FailAfterBegin,
    PanicAfterBegin,
}

impl Command for Stock {
    type Output = ();
    const NAME: &'static str = "Stock";
}

#[derive(Debug)]
struct Stocked(&'static str);

impl Event for Stocked {
    fn name(&self) -> &'static str {
        "Stocked"
    }
}

fn insert(uow: &SqliteUnitOfWork, sku: &str) -> Result<(), BusError> {
    uow.connection().execute("INSERT INTO stock (sku) VALUES (?1)", [sku])?;
    Ok(())
}

fn failure(sku: &str) -> Result<(), BusError> {
    Err(BusError::handler(format!("{sku} is out of range")))
}

struct StockHandler;

impl CommandHandler<Stock, SqliteUnitOfWork> for StockHandler {
    async fn handle(&self, command: Stock, uow: &mut SqliteUnitOfWork) -> Result<(), BusError> {
        uow.begin()?;
        insert(uow, command.sku)?;
        match command.how {
            How::Commit => {}
            How::FailAfterBegin => failure(command.sku)?,
            How::PanicAfterBegin => panic!("bug while stocking {}", command.sku),
        }
        uow.record(Stocked(command.sku));
        uow.commit().await
    }
}

/// Reacts to `Stocked` with work of its own that fails half-way.
struct FailingAudit;

impl EventHandler<Stocked, SqliteUnitOfWork> for FailingAudit {
    async fn handle(&self, event: &Stocked, uow: &mut SqliteUnitOfWork) -> Result<(), BusError> {
        uow.begin()?;
        insert(uow, &format!("audit-{}", event.0))?;
        failure(event.0)
    }
}

/// Reacts to `Stocked` with committed work of its own.
struct Audit;

impl EventHandler<Stocked, SqliteUnitOfWork> for Audit {
    async fn handle(&self, event: &Stocked, uow: &mut SqliteUnitOfWork) -> Result<(), BusError> {
        uow.begin()?;
        insert(uow, &format!("seen-{}", event.0))?;
        uow.commit().await
    }
}

fn open() -> (tempfile::TempDir, SqliteUnitOfWork) {
    let dir = tempfile::tempdir().unwrap();
    let uow = SqliteUnitOfWork::open(&dir.path().join("app.db")).unwrap();
    uow.connection().execute_batch("CREATE TABLE stock (sku TEXT PRIMARY KEY)").unwrap();
    (dir, uow)
}

fn skus(uow: &SqliteUnitOfWork) -> Vec<String> {
    let mut statement = uow.connection().prepare("SELECT sku FROM stock ORDER BY sku").unwrap();
    statement.query_map([], |row| row.get(0)).unwrap().map(Result::unwrap).collect()
}

fn bus() -> MessageBus<SqliteUnitOfWork> {
    let mut bus = MessageBus::new();
    bus.on_command(StockHandler).unwrap();
    bus.on_event(FailingAudit).on_event(Audit);
    bus
}

// Regression: the bus never rolled back after a handler's error, so a `?` after `begin`
// left the transaction open and every later `begin` failed ("a transaction is already
// open"), wedging a service that keeps one unit of work.
#[tokio::test]
async fn a_handler_failing_after_begin_is_rolled_back_and_the_next_command_runs() {
    let (_dir, mut uow) = open();
    let bus = bus();
    let failed = bus.dispatch(Stock { sku: "BAD", how: How::FailAfterBegin }, &mut uow).await;
    assert!(matches!(&failed, Err(BusError::Handler(e)) if e.to_string() == "BAD is out of range"));
    bus.dispatch(Stock { sku: "LAMP", how: How::Commit }, &mut uow).await.unwrap();
    // The failed command's insert is gone; so is the failing event handler's, and the
    // event handler after it still committed its work.
    assert_eq!(skus(&uow), ["LAMP", "seen-LAMP"]);
}

// Regression: a panic after `begin` left the transaction open for the unit of work's next
// user, whose `begin` failed.
#[tokio::test]
async fn work_abandoned_by_a_panicking_handler_is_rolled_back_by_the_next_begin() {
    let (_dir, mut uow) = open();
    let bus = bus();
    let panicked = std::panic::AssertUnwindSafe(
        bus.dispatch(Stock { sku: "BUG", how: How::PanicAfterBegin }, &mut uow),
    )
    .catch_unwind()
    .await;
    assert!(panicked.is_err(), "the handler panicked");
    bus.dispatch(Stock { sku: "RUG", how: How::Commit }, &mut uow).await.unwrap();
    assert_eq!(skus(&uow), ["RUG", "seen-RUG"]);
}
