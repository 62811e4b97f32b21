//! Exchanges: declaring, redeclaring, deleting, the reserved `amq.` names, and routing through
//! each exchange type, exchange-to-exchange bindings and alternate exchanges.

mod common;

use common::{
    assert_code, channel, channel_closed_with, close_watcher, connect, declare_queue, get_body,
    message_count, publish, publish_with, within,
};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeBindOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};
use postroom_amqp::constants::reply;
use postroom_testkit::TestBroker;

async fn declare_exchange(ch: &Channel, name: &str, kind: ExchangeKind) -> lapin::Result<()> {
    declare_exchange_with(ch, name, kind, ExchangeDeclareOptions::default(), table(&[])).await
}

async fn declare_exchange_with(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    options: ExchangeDeclareOptions,
    arguments: FieldTable,
) -> lapin::Result<()> {
    within("exchange.declare", ch.exchange_declare(name.into(), kind, options, arguments)).await
}

async fn passive_declare(ch: &Channel, name: &str) -> lapin::Result<()> {
    let options = ExchangeDeclareOptions { passive: true, ..ExchangeDeclareOptions::default() };
    declare_exchange_with(ch, name, ExchangeKind::Direct, options, table(&[])).await
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str, arguments: FieldTable) {
    within(
        "queue.bind",
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            arguments,
        ),
    )
    .await
    .expect("queue bound");
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in entries {
        table.insert((*key).into(), value.clone());
    }
    table
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Drains `queue` with basic.get and returns the bodies as strings.
async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(body) = get_body(ch, queue).await {
        bodies.push(String::from_utf8(body).unwrap());
    }
    bodies
}

#[tokio::test]
async fn each_exchange_type_can_be_declared_and_redeclared() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    for (name, kind) in [
        ("x-direct", ExchangeKind::Direct),
        ("x-fanout", ExchangeKind::Fanout),
        ("x-topic", ExchangeKind::Topic),
        ("x-headers", ExchangeKind::Headers),
    ] {
        declare_exchange(&ch, name, kind.clone()).await.unwrap();
        // An identical redeclare is a no-op, and a passive declare finds it.
        declare_exchange(&ch, name, kind).await.unwrap();
        passive_declare(&ch, name).await.unwrap();
    }
    broker.stop().await;
}

#[tokio::test]
async fn passive_declare_of_a_missing_exchange_closes_only_the_channel_with_404() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    assert_code(passive_declare(&ch, "no-such-exchange").await, reply::NOT_FOUND);
    // The channel is closed: further methods on it fail.
    assert!(passive_declare(&ch, "amq.direct").await.is_err());
    // The connection is not: a new channel works.
    assert!(conn.status().connected());
    let again = channel(&conn).await;
    passive_declare(&again, "amq.direct").await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn redeclaring_with_a_different_type_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_exchange(&ch, "typed", ExchangeKind::Direct).await.unwrap();
    assert_code(
        declare_exchange(&ch, "typed", ExchangeKind::Fanout).await,
        reply::PRECONDITION_FAILED,
    );
    broker.stop().await;
}

#[tokio::test]
async fn redeclaring_with_a_different_durable_flag_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_exchange(&ch, "flagged", ExchangeKind::Topic).await.unwrap();
    let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    assert_code(
        declare_exchange_with(&ch, "flagged", ExchangeKind::Topic, durable, table(&[])).await,
        reply::PRECONDITION_FAILED,
    );
    broker.stop().await;
}

#[tokio::test]
async fn predeclared_amq_exchanges_exist() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    for name in ["amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"] {
        passive_declare(&ch, name).await.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // Redeclaring one with its own type and flags is allowed, as in RabbitMQ.
    let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    declare_exchange_with(&ch, "amq.topic", ExchangeKind::Topic, durable, table(&[]))
        .await
        .unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn declaring_a_new_amq_prefixed_exchange_is_refused_with_403() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    assert_code(
        declare_exchange(&ch, "amq.foo", ExchangeKind::Direct).await,
        reply::ACCESS_REFUSED,
    );
    broker.stop().await;
}

#[tokio::test]
async fn deleting_a_predeclared_exchange_is_refused_with_403() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let result = within(
        "exchange.delete",
        ch.exchange_delete("amq.direct".into(), ExchangeDeleteOptions::default()),
    )
    .await;
    assert_code(result, reply::ACCESS_REFUSED);
    broker.stop().await;
}

#[tokio::test]
async fn deleted_exchange_is_gone() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_exchange(&ch, "doomed", ExchangeKind::Fanout).await.unwrap();
    within(
        "exchange.delete",
        ch.exchange_delete("doomed".into(), ExchangeDeleteOptions::default()),
    )
    .await
    .unwrap();
    assert_code(passive_declare(&ch, "doomed").await, reply::NOT_FOUND);
    broker.stop().await;
}

#[tokio::test]
async fn delete_if_unused_of_an_exchange_with_bindings_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_exchange(&ch, "bound", ExchangeKind::Direct).await.unwrap();
    declare_queue(&ch, "bound-q").await;
    bind(&ch, "bound-q", "bound", "k", table(&[])).await;
    let if_unused = ExchangeDeleteOptions { if_unused: true, ..ExchangeDeleteOptions::default() };
    let result = within("exchange.delete", ch.exchange_delete("bound".into(), if_unused)).await;
    assert_code(result, reply::PRECONDITION_FAILED);
    // Still there, still routing.
    let ch = channel(&conn).await;
    publish(&ch, "bound", "k", b"kept").await;
    assert_eq!(drain(&ch, "bound-q").await, ["kept"]);
    broker.stop().await;
}

#[tokio::test]
async fn exchange_to_exchange_binding_routes_messages() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_exchange(&ch, "e2e-src", ExchangeKind::Topic).await.unwrap();
    declare_exchange(&ch, "e2e-dst", ExchangeKind::Fanout).await.unwrap();
    within(
        "exchange.bind",
        ch.exchange_bind(
            "e2e-dst".into(),
            "e2e-src".into(),
            "orders.*".into(),
            ExchangeBindOptions::default(),
            table(&[]),
        ),
    )
    .await
    .unwrap();
    declare_queue(&ch, "e2e-q").await;
    bind(&ch, "e2e-q", "e2e-dst", "", table(&[])).await;
    publish(&ch, "e2e-src", "orders.new", b"via-binding").await;
    publish(&ch, "e2e-src", "invoices.new", b"not-matched").await;
    assert_eq!(drain(&ch, "e2e-q").await, ["via-binding"]);
    broker.stop().await;
}

#[tokio::test]
async fn alternate_exchange_receives_unroutable_messages() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_exchange(&ch, "ae", ExchangeKind::Fanout).await.unwrap();
    declare_queue(&ch, "ae-q").await;
    bind(&ch, "ae-q", "ae", "", table(&[])).await;
    declare_exchange_with(
        &ch,
        "with-ae",
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        table(&[("alternate-exchange", text("ae"))]),
    )
    .await
    .unwrap();
    declare_queue(&ch, "routed-q").await;
    bind(&ch, "routed-q", "with-ae", "known", table(&[])).await;
    publish(&ch, "with-ae", "known", b"routed").await;
    publish(&ch, "with-ae", "unknown", b"unroutable").await;
    assert_eq!(drain(&ch, "routed-q").await, ["routed"]);
    assert_eq!(drain(&ch, "ae-q").await, ["unroutable"]);
    broker.stop().await;
}

#[tokio::test]
async fn publishing_to_an_internal_exchange_is_refused_with_403() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let internal = ExchangeDeclareOptions { internal: true, ..ExchangeDeclareOptions::default() };
    declare_exchange_with(&ch, "inner", ExchangeKind::Fanout, internal, table(&[])).await.unwrap();
    let mut watcher = close_watcher(&ch).await;
    publish(&ch, "inner", "", b"refused").await;
    assert_eq!(channel_closed_with(&mut watcher).await, reply::ACCESS_REFUSED);
    broker.stop().await;
}

#[tokio::test]
async fn internal_exchange_still_receives_from_an_exchange_binding() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let internal = ExchangeDeclareOptions { internal: true, ..ExchangeDeclareOptions::default() };
    declare_exchange_with(&ch, "inner2", ExchangeKind::Fanout, internal, table(&[])).await.unwrap();
    declare_exchange(&ch, "outer2", ExchangeKind::Fanout).await.unwrap();
    within(
        "exchange.bind",
        ch.exchange_bind(
            "inner2".into(),
            "outer2".into(),
            "".into(),
            ExchangeBindOptions::default(),
            table(&[]),
        ),
    )
    .await
    .unwrap();
    declare_queue(&ch, "inner2-q").await;
    bind(&ch, "inner2-q", "inner2", "", table(&[])).await;
    publish(&ch, "outer2", "", b"through").await;
    assert_eq!(drain(&ch, "inner2-q").await, ["through"]);
    broker.stop().await;
}

#[tokio::test]
async fn topic_routing_matches_star_and_hash_like_rabbitmq() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_exchange(&ch, "topics", ExchangeKind::Topic).await.unwrap();
    let patterns = ["#", "a.#", "a.*", "*.b", "a.b.c", "a.#.c"];
    for (i, pattern) in patterns.iter().enumerate() {
        let queue = format!("topic-{i}");
        declare_queue(&ch, &queue).await;
        bind(&ch, &queue, "topics", pattern, table(&[])).await;
    }
    for key in ["", "a", "a.b", "x.b", "a.b.c", "a.x.y.c", "b"] {
        let body = if key.is_empty() { "<empty>" } else { key };
        publish(&ch, "topics", key, body.as_bytes()).await;
    }
    let expected: [&[&str]; 6] = [
        // `#` matches everything, the empty key included.
        &["<empty>", "a", "a.b", "x.b", "a.b.c", "a.x.y.c", "b"],
        // `a.#` matches "a" itself (zero words after it).
        &["a", "a.b", "a.b.c", "a.x.y.c"],
        &["a.b"],
        &["a.b", "x.b"],
        &["a.b.c"],
        &["a.b.c", "a.x.y.c"],
    ];
    for (i, want) in expected.iter().enumerate() {
        let got = drain(&ch, &format!("topic-{i}")).await;
        assert_eq!(got, *want, "binding {:?}", patterns[i]);
    }
    broker.stop().await;
}

#[tokio::test]
async fn headers_exchange_matches_all_and_any() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_exchange(&ch, "hdrs", ExchangeKind::Headers).await.unwrap();
    declare_queue(&ch, "hdr-all").await;
    declare_queue(&ch, "hdr-any").await;
    let rule = |mode: &str| {
        table(&[("x-match", text(mode)), ("format", text("pdf")), ("type", text("report"))])
    };
    bind(&ch, "hdr-all", "hdrs", "", rule("all")).await;
    bind(&ch, "hdr-any", "hdrs", "", rule("any")).await;
    let messages = [
        ("both", vec![("format", "pdf"), ("type", "report")]),
        ("format-only", vec![("format", "pdf")]),
        ("wrong-type", vec![("format", "zip"), ("type", "log")]),
        ("both-plus-extra", vec![("format", "pdf"), ("type", "report"), ("x", "y")]),
        ("none", vec![]),
    ];
    for (body, headers) in &messages {
        let headers: Vec<(&str, AMQPValue)> = headers.iter().map(|(k, v)| (*k, text(v))).collect();
        let properties = BasicProperties::default().with_headers(table(&headers));
        publish_with(&ch, "hdrs", "ignored", body.as_bytes(), properties).await;
    }
    assert_eq!(drain(&ch, "hdr-all").await, ["both", "both-plus-extra"]);
    assert_eq!(drain(&ch, "hdr-any").await, ["both", "format-only", "both-plus-extra"]);
    broker.stop().await;
}

#[tokio::test]
async fn fanout_copies_each_message_to_every_bound_queue() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_exchange(&ch, "fan", ExchangeKind::Fanout).await.unwrap();
    for i in 0..3 {
        let queue = format!("fan-{i}");
        declare_queue(&ch, &queue).await;
        bind(&ch, &queue, "fan", &format!("ignored-{i}"), table(&[])).await;
    }
    publish(&ch, "fan", "any-key", b"one").await;
    publish(&ch, "fan", "", b"two").await;
    for i in 0..3 {
        let queue = format!("fan-{i}");
        assert_eq!(message_count(&ch, &queue).await, 2);
        assert_eq!(drain(&ch, &queue).await, ["one", "two"]);
    }
    broker.stop().await;
}

#[tokio::test]
async fn direct_exchange_routes_by_exact_key_only() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_exchange(&ch, "direct-x", ExchangeKind::Direct).await.unwrap();
    declare_queue(&ch, "direct-q").await;
    bind(&ch, "direct-q", "direct-x", "exact", table(&[])).await;
    publish(&ch, "direct-x", "exact", b"yes").await;
    publish(&ch, "direct-x", "exact.not", b"no").await;
    publish(&ch, "direct-x", "EXACT", b"no").await;
    assert_eq!(drain(&ch, "direct-q").await, ["yes"]);
    broker.stop().await;
}

#[tokio::test]
async fn auto_delete_exchange_goes_with_its_last_binding() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let auto_delete =
        ExchangeDeclareOptions { auto_delete: true, ..ExchangeDeclareOptions::default() };
    declare_exchange_with(&ch, "transient-x", ExchangeKind::Direct, auto_delete, table(&[]))
        .await
        .unwrap();
    declare_queue(&ch, "transient-xq").await;
    bind(&ch, "transient-xq", "transient-x", "a", table(&[])).await;
    bind(&ch, "transient-xq", "transient-x", "b", table(&[])).await;
    let unbind = |key: &'static str| {
        within(
            "queue.unbind",
            ch.queue_unbind("transient-xq".into(), "transient-x".into(), key.into(), table(&[])),
        )
    };
    unbind("a").await.unwrap();
    passive_declare(&ch, "transient-x").await.unwrap();
    unbind("b").await.unwrap();
    assert_code(passive_declare(&ch, "transient-x").await, reply::NOT_FOUND);
    broker.stop().await;
}

#[tokio::test]
async fn mandatory_message_taken_by_an_alternate_exchange_is_not_returned() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_exchange(&ch, "ae2", ExchangeKind::Fanout).await.unwrap();
    declare_queue(&ch, "ae2-q").await;
    bind(&ch, "ae2-q", "ae2", "", table(&[])).await;
    declare_exchange_with(
        &ch,
        "with-ae2",
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        table(&[("alternate-exchange", text("ae2"))]),
    )
    .await
    .unwrap();
    within("confirm.select", ch.confirm_select(ConfirmSelectOptions::default())).await.unwrap();
    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            "with-ae2".into(),
            "nowhere".into(),
            BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
            b"caught",
            BasicProperties::default(),
        ),
    )
    .await
    .unwrap();
    let confirmation = within("the confirm", confirm).await.unwrap();
    assert!(matches!(confirmation, Confirmation::Ack(None)), "{confirmation:?}");
    assert_eq!(drain(&ch, "ae2-q").await, ["caught"]);
    broker.stop().await;
}

#[tokio::test]
async fn exchange_binding_cycle_delivers_one_copy_per_queue() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    for name in ["cycle-a", "cycle-b"] {
        declare_exchange(&ch, name, ExchangeKind::Fanout).await.unwrap();
    }
    for (destination, source) in [("cycle-b", "cycle-a"), ("cycle-a", "cycle-b")] {
        within(
            "exchange.bind",
            ch.exchange_bind(
                destination.into(),
                source.into(),
                "".into(),
                ExchangeBindOptions::default(),
                table(&[]),
            ),
        )
        .await
        .unwrap();
    }
    declare_queue(&ch, "cycle-q").await;
    bind(&ch, "cycle-q", "cycle-a", "", table(&[])).await;
    bind(&ch, "cycle-q", "cycle-b", "", table(&[])).await;
    publish(&ch, "cycle-a", "", b"once").await;
    assert_eq!(drain(&ch, "cycle-q").await, ["once"]);
    broker.stop().await;
}
