//! The message bus with an in-memory unit of work: routing, event chains, rollbacks, limits.

use std::sync::{Arc, Mutex};

use postroom_bus::{
    BusError, Command, CommandHandler, Event, EventHandler, InMemoryUnitOfWork, MessageBus,
    UnitOfWork,
};

type Log = Arc<Mutex<Vec<String>>>;

#[derive(Debug)]
struct Allocate {
    sku: String,
    fail: bool,
}

impl Command for Allocate {
    type Output = String;
    const NAME: &'static str = "Allocate";
}

#[derive(Debug)]
struct Allocated {
    sku: String,
}

impl Event for Allocated {
    fn name(&self) -> &'static str {
        "Allocated"
    }
}

#[derive(Debug)]
struct Notified;

impl Event for Notified {
    fn name(&self) -> &'static str {
        "Notified"
    }
}

struct AllocateHandler;

impl CommandHandler<Allocate, InMemoryUnitOfWork> for AllocateHandler {
    async fn handle(
        &self,
        command: Allocate,
        uow: &mut InMemoryUnitOfWork,
    ) -> Result<String, BusError> {
        uow.record(Allocated { sku: command.sku.clone() });
        if command.fail {
            uow.rollback().await?;
            return Err(BusError::handler(format!("invalid sku {}", command.sku)));
        }
        uow.commit().await?;
        Ok(format!("batch-for-{}", command.sku))
    }
}

/// Logs the event and raises `Notified` in its own committed work.
struct Notify(Log);

impl EventHandler<Allocated, InMemoryUnitOfWork> for Notify {
    async fn handle(
        &self,
        event: &Allocated,
        uow: &mut InMemoryUnitOfWork,
    ) -> Result<(), BusError> {
        self.0.lock().unwrap().push(format!("notify {}", event.sku));
        uow.record(Notified);
        uow.commit().await
    }
}

struct Audit(Log);

impl EventHandler<Allocated, InMemoryUnitOfWork> for Audit {
    async fn handle(&self, event: &Allocated, _: &mut InMemoryUnitOfWork) -> Result<(), BusError> {
        self.0.lock().unwrap().push(format!("audit {}", event.sku));
        Ok(())
    }
}

struct Failing(Log);

impl EventHandler<Allocated, InMemoryUnitOfWork> for Failing {
    async fn handle(&self, _: &Allocated, _: &mut InMemoryUnitOfWork) -> Result<(), BusError> {
        self.0.lock().unwrap().push("failing".into());
        Err(BusError::handler("mail server down"))
    }
}

struct AfterNotified(Log);

impl EventHandler<Notified, InMemoryUnitOfWork> for AfterNotified {
    async fn handle(&self, _: &Notified, _: &mut InMemoryUnitOfWork) -> Result<(), BusError> {
        self.0.lock().unwrap().push("notified".into());
        Ok(())
    }
}

fn bus(log: &Log) -> MessageBus<InMemoryUnitOfWork> {
    let mut bus = MessageBus::new();
    bus.on_command(AllocateHandler).unwrap();
    bus.on_event(Notify(Arc::clone(log)))
        .on_event(Failing(Arc::clone(log)))
        .on_event(Audit(Arc::clone(log)))
        .on_event(AfterNotified(Arc::clone(log)));
    bus
}

#[tokio::test]
async fn a_command_reaches_its_handler_and_its_events_every_event_handler_in_order() {
    let log = Log::default();
    let bus = bus(&log);
    let mut uow = InMemoryUnitOfWork::default();
    let command = Allocate { sku: "LAMP".into(), fail: false };
    let batch = bus.dispatch(command, &mut uow).await.unwrap();
    assert_eq!(batch, "batch-for-LAMP");
    // Handlers of one event run in registration order; a failing one does not stop the
    // rest; the event a handler raised is handled after the first event's handlers.
    assert_eq!(*log.lock().unwrap(), ["notify LAMP", "failing", "audit LAMP", "notified"]);
    assert_eq!(uow.committed_event_names(), ["Allocated", "Notified"]);
}

#[tokio::test]
async fn rolled_back_work_raises_no_events_and_the_error_reaches_the_caller() {
    let log = Log::default();
    let bus = bus(&log);
    let mut uow = InMemoryUnitOfWork::default();
    let error = bus.dispatch(Allocate { sku: "NOPE".into(), fail: true }, &mut uow).await;
    assert!(matches!(&error, Err(BusError::Handler(e)) if e.to_string() == "invalid sku NOPE"));
    assert!(log.lock().unwrap().is_empty());
    assert_eq!(uow.commits(), 0);
}

#[tokio::test]
async fn a_command_has_exactly_one_handler() {
    let mut bus: MessageBus<InMemoryUnitOfWork> = MessageBus::new();
    let mut uow = InMemoryUnitOfWork::default();
    let missing = bus.dispatch(Allocate { sku: "A".into(), fail: false }, &mut uow).await;
    assert!(matches!(missing, Err(BusError::NoHandler("Allocate"))));
    bus.on_command(AllocateHandler).unwrap();
    assert!(matches!(bus.on_command(AllocateHandler), Err(BusError::DuplicateHandler("Allocate"))));
}

#[derive(Debug)]
struct Ping;

impl Event for Ping {
    fn name(&self) -> &'static str {
        "Ping"
    }
}

/// Answers every `Ping` with another: a cycle.
struct Echo;

impl EventHandler<Ping, InMemoryUnitOfWork> for Echo {
    async fn handle(&self, _: &Ping, uow: &mut InMemoryUnitOfWork) -> Result<(), BusError> {
        uow.record(Ping);
        uow.commit().await
    }
}

#[tokio::test]
async fn an_event_cycle_ends_at_the_event_limit() {
    let mut bus = MessageBus::new().with_event_limit(50);
    bus.on_event(Echo);
    let mut uow = InMemoryUnitOfWork::default();
    let result = bus.publish(Ping, &mut uow).await;
    assert!(matches!(result, Err(BusError::EventLimit(50))), "{result:?}");
    assert_eq!(uow.commits(), 51);
}

#[tokio::test]
async fn an_event_from_outside_reaches_its_handlers() {
    let log = Log::default();
    let bus = bus(&log);
    let mut uow = InMemoryUnitOfWork::default();
    bus.publish(Allocated { sku: "RUG".into() }, &mut uow).await.unwrap();
    assert_eq!(*log.lock().unwrap(), ["notify RUG", "failing", "audit RUG", "notified"]);
}
