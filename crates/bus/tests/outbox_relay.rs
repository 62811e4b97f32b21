//! The transactional outbox and its relay against a real Postroom broker: events leave
//! only with committed state, in order per aggregate, across a broker outage.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postroom_bus::{
    BusError, Event, ExternalEvent, OutboxRelay, RelayConfig, SqliteUnitOfWork, UnitOfWork, outbox,
};
use postroom_client::lapin::options::BasicGetOptions;
use postroom_client::lapin::{Channel, Connection, ConnectionProperties};
use postroom_client::{
    Backoff, Connector, Envelope, ExchangeSpec, Json, Message, Publisher, PublisherConfig,
    QueueSpec, bind,
};
use postroom_testkit::TestBroker;
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StockChanged {
    sku: String,
    version: u32,
}

impl Message for StockChanged {
    const EXCHANGE: &'static str = "stock";
    const MESSAGE_TYPE: &'static str = "stock.changed";
    fn routing_key(&self) -> Cow<'_, str> {
        "stock.changed".into()
    }
}

impl Event for StockChanged {
    fn name(&self) -> &'static str {
        "StockChanged"
    }
    fn to_external(&self) -> Result<Option<ExternalEvent>, BusError> {
        ExternalEvent::json(self, &self.sku).map(Some)
    }
}

/// An internal event: never written to the outbox.
#[derive(Debug)]
struct CacheInvalidated;

impl Event for CacheInvalidated {
    fn name(&self) -> &'static str {
        "CacheInvalidated"
    }
}

async fn raw_channel(url: &str) -> (Connection, Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

async fn declare(url: &str) {
    let (connection, channel) = raw_channel(url).await;
    ExchangeSpec::topic("stock").declare(&channel).await.unwrap();
    QueueSpec::new("stock-events").declare(&channel).await.unwrap();
    bind(&channel, "stock-events", "stock", "stock.#").await.unwrap();
    connection.close(200, "ok".into()).await.unwrap();
}

async fn take(channel: &Channel, count: usize) -> Vec<(StockChanged, Envelope)> {
    let deadline = Instant::now() + WAIT;
    let mut taken = Vec::new();
    while taken.len() < count {
        assert!(Instant::now() < deadline, "only {} of {count} messages arrived", taken.len());
        let got = channel
            .basic_get("stock-events".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        match got {
            Some(message) => taken.push((
                serde_json::from_slice(&message.delivery.data).unwrap(),
                Envelope::from_properties(&message.delivery.properties),
            )),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    taken
}

/// Changes a row and records the event in one unit of work.
async fn change_stock(uow: &mut SqliteUnitOfWork, sku: &str, version: u32) {
    uow.begin().unwrap();
    uow.connection()
        .execute(
            "INSERT INTO stock (sku, version) VALUES (?1, ?2)
             ON CONFLICT (sku) DO UPDATE SET version = excluded.version",
            (sku, version),
        )
        .unwrap();
    uow.record(StockChanged { sku: sku.into(), version });
    uow.record(CacheInvalidated);
    uow.commit().await.unwrap();
}

fn open_app_db(path: &std::path::Path) -> SqliteUnitOfWork {
    let uow = SqliteUnitOfWork::open(path).unwrap();
    uow.connection()
        .execute_batch("CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, version INTEGER)")
        .unwrap();
    uow
}

#[tokio::test]
async fn committed_events_are_published_with_confirms_and_marked_sent() {
    let broker = TestBroker::start().await;
    declare(&broker.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let mut uow = open_app_db(&db);
    let cause = Envelope::new().with_correlation_id("batch-import-7");
    uow.set_cause(Some(cause.clone()));
    change_stock(&mut uow, "LAMP", 1).await;
    change_stock(&mut uow, "LAMP", 2).await;
    assert_eq!(outbox::unsent_count(uow.connection()).unwrap(), 2, "internal events stay in");

    let publisher =
        Arc::new(Publisher::connect(&broker.url(), PublisherConfig::default()).await.unwrap());
    let relay = OutboxRelay::open(&db, Arc::clone(&publisher), RelayConfig::default()).unwrap();
    assert_eq!(relay.relay_once().await.unwrap(), 2);
    assert_eq!(relay.relay_once().await.unwrap(), 0);
    assert_eq!(outbox::unsent_count(uow.connection()).unwrap(), 0);

    let (_connection, channel) = raw_channel(&broker.url()).await;
    let received = take(&channel, 2).await;
    let versions: Vec<u32> = received.iter().map(|(event, _)| event.version).collect();
    assert_eq!(versions, [1, 2]);
    let envelope = &received[0].1;
    assert_eq!(envelope.message_type.as_deref(), Some("stock.changed"));
    assert_eq!(envelope.correlation_id.as_deref(), Some("batch-import-7"));
    assert_eq!(envelope.causation_id.as_deref(), Some(cause.message_id.as_str()));
    assert_eq!(
        outbox::sent_at(uow.connection(), &envelope.message_id).unwrap().map(|s| s.is_some()),
        Some(true)
    );
    publisher.close().await;
    broker.stop().await;
}

#[tokio::test]
async fn rolled_back_work_leaves_nothing_to_publish() {
    let dir = tempfile::tempdir().unwrap();
    let mut uow = open_app_db(&dir.path().join("app.db"));
    uow.begin().unwrap();
    uow.connection().execute("INSERT INTO stock VALUES ('RUG', 1)", []).unwrap();
    uow.record(StockChanged { sku: "RUG".into(), version: 1 });
    uow.rollback().await.unwrap();
    assert_eq!(outbox::unsent_count(uow.connection()).unwrap(), 0);
    let rows: i64 =
        uow.connection().query_row("SELECT COUNT(*) FROM stock", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 0);
    assert!(uow.collect_new_events().is_empty());
    assert!(matches!(uow.commit().await, Err(BusError::UnitOfWork(_))), "commit without begin");
}

#[tokio::test]
async fn the_relay_keeps_order_across_a_broker_outage() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_path_buf();
    let broker = TestBroker::start_with(|config| {
        config.amqp_listen = listen;
        config.data_dir = data_dir.clone();
    })
    .await;
    let url = broker.url();
    declare(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let mut uow = open_app_db(&db);
    // Give up fast while the broker is down: the relay, not the publisher, retries.
    let backoff = Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
        max_attempts: Some(2),
        ..Backoff::default()
    };
    let connector = Arc::new(Connector::new(&url, backoff).unwrap());
    let config = PublisherConfig { publish_attempts: 1, ..PublisherConfig::default() };
    let publisher = Arc::new(Publisher::new(connector, Json, config).unwrap());
    let relay = OutboxRelay::open(&db, Arc::clone(&publisher), RelayConfig::default()).unwrap();

    for version in 1..=3 {
        change_stock(&mut uow, "LAMP", version).await;
    }
    assert_eq!(relay.relay_once().await.unwrap(), 3);
    broker.stop().await;

    for version in 4..=6 {
        change_stock(&mut uow, "LAMP", version).await;
    }
    assert!(relay.relay_once().await.is_err(), "the broker is down");
    assert_eq!(outbox::unsent_count(uow.connection()).unwrap(), 3);

    // Same port and data dir: the durable queue and the first three messages survive.
    let broker = TestBroker::start_with(|config| {
        config.amqp_listen = listen;
        config.data_dir = data_dir.clone();
    })
    .await;
    let deadline = Instant::now() + WAIT;
    while outbox::unsent_count(uow.connection()).unwrap() > 0 {
        assert!(Instant::now() < deadline, "relay did not catch up");
        if relay.relay_once().await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (_connection, channel) = raw_channel(&url).await;
    let versions: Vec<u32> =
        take(&channel, 6).await.iter().map(|(event, _)| event.version).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
    publisher.close().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_running_relay_is_woken_by_a_commit() {
    let broker = TestBroker::start().await;
    declare(&broker.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let publisher =
        Arc::new(Publisher::connect(&broker.url(), PublisherConfig::default()).await.unwrap());
    // A poll interval far longer than the test: only the wake-up can deliver in time.
    let config = RelayConfig { poll_interval: Duration::from_secs(3600), ..RelayConfig::default() };
    let relay = OutboxRelay::open(&db, Arc::clone(&publisher), config).unwrap();
    let mut uow = open_app_db(&db).wake_on_commit(relay.waker());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(relay.run(async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(50)).await;
    change_stock(&mut uow, "RUG", 9).await;
    let (_connection, channel) = raw_channel(&broker.url()).await;
    assert_eq!(take(&channel, 1).await[0].0.version, 9);
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, running).await.unwrap().unwrap();
    publisher.close().await;
    broker.stop().await;
}

// Regression: a publisher without confirms was accepted, and every row it "published" was
// marked sent without the broker's word that it took it.
#[tokio::test]
async fn a_relay_refuses_a_publisher_without_confirms() {
    let dir = tempfile::tempdir().unwrap();
    let connector =
        Arc::new(Connector::new("amqp://guest:guest@127.0.0.1:1/%2f", Backoff::default()).unwrap());
    let config = PublisherConfig { confirms: false, ..PublisherConfig::default() };
    let publisher = Arc::new(Publisher::new(connector, Json, config).unwrap());
    let refused = OutboxRelay::open(&dir.path().join("app.db"), publisher, RelayConfig::default());
    assert!(matches!(&refused, Err(BusError::Config(reason)) if reason.contains("confirms")));
}

// Regression: a row whose event no queue took was confirmed by the broker and marked sent,
// so the event was lost without a trace.
#[tokio::test]
async fn an_event_no_queue_takes_is_not_marked_sent() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = raw_channel(&broker.url()).await;
    ExchangeSpec::topic("stock").declare(&channel).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let mut uow = open_app_db(&db);
    change_stock(&mut uow, "LAMP", 1).await;
    let publisher =
        Arc::new(Publisher::connect(&broker.url(), PublisherConfig::default()).await.unwrap());
    let relay = OutboxRelay::open(&db, Arc::clone(&publisher), RelayConfig::default()).unwrap();
    let failed = relay.relay_once().await;
    assert!(
        matches!(&failed, Err(BusError::Publish(postroom_client::Error::Unroutable { .. }))),
        "{failed:?}"
    );
    assert_eq!(outbox::unsent_count(uow.connection()).unwrap(), 1);

    // Once a queue is bound, the row goes out.
    QueueSpec::new("stock-events").declare(&channel).await.unwrap();
    bind(&channel, "stock-events", "stock", "stock.#").await.unwrap();
    assert_eq!(relay.relay_once().await.unwrap(), 1);
    assert_eq!(take(&channel, 1).await[0].0.version, 1);
    publisher.close().await;
    broker.stop().await;
}

/// Writes `event` for `aggregate` to the outbox, to `exchange`.
fn append_to(db: &std::path::Path, exchange: &str, aggregate: &str, version: u32) {
    let connection = outbox::open(db).unwrap();
    let mut event =
        ExternalEvent::json(&StockChanged { sku: aggregate.into(), version }, aggregate).unwrap();
    event.exchange = exchange.into();
    outbox::append(&connection, &event, None).unwrap();
}

// Regression: one row the broker refused (here a missing exchange, 404) stopped the relay at
// that row for ever, so no event of any aggregate left the service again.
#[tokio::test]
async fn a_refused_row_holds_back_only_its_aggregate_and_is_parked_after_its_attempts() {
    let broker = TestBroker::start().await;
    declare(&broker.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    append_to(&db, "stock-v2", "LAMP", 1); // poison until stock-v2 exists
    append_to(&db, "stock", "LAMP", 2);
    append_to(&db, "stock", "RUG", 1);
    append_to(&db, "stock", "RUG", 2);
    let publisher =
        Arc::new(Publisher::connect(&broker.url(), PublisherConfig::default()).await.unwrap());
    let config = RelayConfig { park_after: 2, ..RelayConfig::default() };
    let relay = OutboxRelay::open(&db, Arc::clone(&publisher), config).unwrap();
    let connection = outbox::open(&db).unwrap();

    assert!(relay.relay_once().await.is_err(), "LAMP's first row was refused");
    let (_connection, channel) = raw_channel(&broker.url()).await;
    let rugs: Vec<_> = take(&channel, 2).await.into_iter().map(|(event, _)| event).collect();
    assert_eq!(
        rugs,
        [
            StockChanged { sku: "RUG".into(), version: 1 },
            StockChanged { sku: "RUG".into(), version: 2 }
        ]
    );
    assert!(outbox::parked(&connection, 10).unwrap().is_empty(), "one attempt so far");

    assert!(relay.relay_once().await.is_err(), "refused again");
    let parked = outbox::parked(&connection, 10).unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].attempts, 2);
    assert!(parked[0].last_error.as_deref().unwrap().contains("NOT_FOUND"), "{parked:?}");
    // Parked: the relay no longer tries LAMP, and LAMP's second event does not overtake it.
    assert_eq!(relay.relay_once().await.unwrap(), 0);
    common_assert_empty(&channel).await;
    assert_eq!(outbox::unsent_count(&connection).unwrap(), 2);

    // The exchange appears; unparked, LAMP's events go out in order.
    ExchangeSpec::topic("stock-v2").declare(&channel).await.unwrap();
    bind(&channel, "stock-events", "stock-v2", "stock.#").await.unwrap();
    assert!(outbox::unpark(&connection, parked[0].id).unwrap());
    assert_eq!(relay.relay_once().await.unwrap(), 2);
    let lamps: Vec<u32> =
        take(&channel, 2).await.into_iter().map(|(event, _)| event.version).collect();
    assert_eq!(lamps, [1, 2]);
    publisher.close().await;
    broker.stop().await;
}

// A row that can never be sent (written before append checked lengths, or by another
// writer) is parked at once rather than tried `park_after` times.
#[tokio::test]
async fn a_row_that_can_never_be_sent_is_parked_at_once() {
    let broker = TestBroker::start().await;
    declare(&broker.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    append_to(&db, "stock", "LAMP", 1);
    append_to(&db, "stock", "RUG", 1);
    let connection = outbox::open(&db).unwrap();
    let long_key = "k".repeat(300);
    connection
        .execute(
            "UPDATE postroom_outbox SET routing_key = ?1 WHERE aggregate_id = 'LAMP'",
            [&long_key],
        )
        .unwrap();
    let publisher =
        Arc::new(Publisher::connect(&broker.url(), PublisherConfig::default()).await.unwrap());
    let relay = OutboxRelay::open(&db, Arc::clone(&publisher), RelayConfig::default()).unwrap();
    assert!(relay.relay_once().await.is_err());
    let parked = outbox::parked(&connection, 10).unwrap();
    assert_eq!((parked.len(), parked[0].attempts), (1, 1));
    let (_connection, channel) = raw_channel(&broker.url()).await;
    assert_eq!(take(&channel, 1).await[0].0.sku, "RUG");
    publisher.close().await;
    broker.stop().await;
}

async fn common_assert_empty(channel: &Channel) {
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got =
        channel.basic_get("stock-events".into(), BasicGetOptions { no_ack: true }).await.unwrap();
    assert!(got.is_none(), "unexpected message in stock-events");
}
