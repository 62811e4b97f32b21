"""kombu (Celery's messaging library, py-amqp transport) works unchanged against the broker."""

import socket
import time

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue


def _drain_until(conn, done, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=min(1.0, max(0.05, deadline - time.monotonic())))
        except socket.timeout:
            pass
    return done()


@pytest.fixture
def kombu_connection(amqp_url):
    with Connection(amqp_url, connect_timeout=5, transport_options={"max_retries": 1}) as conn:
        conn.connect()
        yield conn


def test_kombu_producer_and_consumer_round_trip_a_json_message(kombu_connection, unique_name):
    exchange = Exchange(unique_name("kombu-ex"), type="direct", durable=True)
    queue = Queue(unique_name("kombu-q"), exchange=exchange, routing_key="tasks", durable=True)
    producer = Producer(kombu_connection.channel(), exchange=exchange, serializer="json")
    producer.publish({"task": "add", "args": [2, 3]}, routing_key="tasks", declare=[queue],
                     delivery_mode="persistent", headers={"retries": 0})

    received = []

    def on_message(body, message):
        received.append((body, message.content_type, message.headers,
                         message.delivery_info["routing_key"]))
        message.ack()

    with Consumer(kombu_connection, queues=[queue], callbacks=[on_message], accept=["json"]):
        assert _drain_until(kombu_connection, lambda: received)
    assert received == [({"task": "add", "args": [2, 3]}, "application/json",
                         {"retries": 0}, "tasks")]


def test_kombu_requeued_message_is_redelivered(kombu_connection, unique_name):
    queue = Queue(unique_name("kombu-q"), exchange=Exchange(unique_name("kombu-ex"), type="direct"),
                  routing_key="k")
    kombu_connection.Producer(serializer="json").publish(
        {"n": 1}, exchange=queue.exchange, routing_key="k", declare=[queue])

    seen = []

    def on_message(body, message):
        seen.append(message.delivery_info["redelivered"])
        if len(seen) == 1:
            message.requeue()
        else:
            message.ack()

    with Consumer(kombu_connection, queues=[queue], callbacks=[on_message], accept=["json"]):
        assert _drain_until(kombu_connection, lambda: len(seen) >= 2)
    assert seen == [False, True]


def test_kombu_simple_queue_put_then_get(kombu_connection, unique_name):
    name = unique_name("kombu-simple")
    with kombu_connection.SimpleQueue(name) as simple:
        simple.put({"hello": "world"})
        message = simple.get(block=True, timeout=5)
        message.ack()
        assert message.payload == {"hello": "world"}
        with pytest.raises(simple.Empty):
            simple.get(block=True, timeout=0.5)
