"""Deduplication at the broker (Idempotent Receiver): a queue or exchange declared with
x-message-deduplication=true keeps the keys of the messages it took (x-deduplication-header,
else message_id) for x-cache-ttl ms, at most x-cache-size of them; a duplicate is confirmed
but not enqueued or routed, and the window of a durable queue or exchange survives a restart.
The arguments follow the RabbitMQ deduplication plugin, which is not part of a stock RabbitMQ,
so these tests skip against another broker."""

import os
import time

import pika
import pytest

from conftest import channel_closed_with, connect, crash_restart, get_body, message_count

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("AMQP_URL")), reason="needs the deduplication arguments"
)

DEDUP = {"x-message-deduplication": True}


def confirmed_channel(connection):
    channel = connection.channel()
    channel.confirm_delivery()
    return channel


def publish(channel, routing_key, body, exchange="", message_id=None, headers=None, **props):
    """Publishes on a confirm channel: pika raises if the broker nacks."""
    properties = pika.BasicProperties(message_id=message_id, headers=headers, **props)
    channel.basic_publish(exchange, routing_key, body, properties)


def drain(channel, queue):
    bodies = []
    while (body := get_body(channel, queue)) is not None:
        bodies.append(body)
    return bodies


def test_a_queue_enqueues_one_message_per_message_id_and_confirms_both(connection, unique_name):
    channel = confirmed_channel(connection)
    queue = unique_name("dedup")
    channel.queue_declare(queue, arguments=DEDUP)
    publish(channel, queue, b"first", message_id="order-1")
    publish(channel, queue, b"again", message_id="order-1")
    publish(channel, queue, b"other", message_id="order-2")
    publish(channel, queue, b"no key")
    publish(channel, queue, b"no key either")
    assert drain(channel, queue) == [b"first", b"other", b"no key", b"no key either"]
    # The window outlives the message: consumed, its key still refuses a repeat.
    publish(channel, queue, b"late repeat", message_id="order-1")
    assert drain(channel, queue) == []


def test_the_deduplication_header_is_the_key_before_the_message_id(connection, unique_name):
    channel = confirmed_channel(connection)
    queue = unique_name("dedup")
    channel.queue_declare(queue, arguments=DEDUP)
    publish(channel, queue, b"a", message_id="m-1", headers={"x-deduplication-header": "k"})
    publish(channel, queue, b"b", message_id="m-2", headers={"x-deduplication-header": "k"})
    publish(channel, queue, b"c", message_id="m-1")
    assert drain(channel, queue) == [b"a", b"c"]


def test_a_key_is_accepted_again_once_its_cache_ttl_is_over(connection, unique_name):
    channel = confirmed_channel(connection)
    queue = unique_name("dedup")
    channel.queue_declare(queue, arguments={**DEDUP, "x-cache-ttl": 300})
    publish(channel, queue, b"1", message_id="k")
    publish(channel, queue, b"2", message_id="k")
    connection.sleep(0.4)
    publish(channel, queue, b"3", message_id="k")
    # A message's own x-cache-ttl header overrides the queue's.
    publish(channel, queue, b"4", message_id="short", headers={"x-cache-ttl": 50})
    connection.sleep(0.1)
    publish(channel, queue, b"5", message_id="short")
    assert drain(channel, queue) == [b"1", b"3", b"4", b"5"]


def test_the_oldest_keys_leave_a_full_window(connection, unique_name):
    channel = confirmed_channel(connection)
    queue = unique_name("dedup")
    channel.queue_declare(queue, arguments={**DEDUP, "x-cache-size": 2})
    for key in ["a", "b", "c", "a", "c"]:
        publish(channel, queue, key.encode(), message_id=key)
    assert drain(channel, queue) == [b"a", b"b", b"c", b"a"]


def test_a_deduplicating_exchange_routes_a_duplicate_nowhere(connection, unique_name):
    channel = confirmed_channel(connection)
    exchange, one, two = unique_name("fan"), unique_name("one"), unique_name("two")
    channel.exchange_declare(exchange, "fanout", arguments=DEDUP)
    for queue in (one, two):
        channel.queue_declare(queue)
        channel.queue_bind(queue, exchange)
    publish(channel, "", b"event", exchange=exchange, message_id="e-1")
    # Mandatory: a duplicate is accepted, not returned.
    channel.basic_publish(
        exchange, "", b"dup", pika.BasicProperties(message_id="e-1"), mandatory=True
    )
    assert drain(channel, one) == [b"event"]
    assert drain(channel, two) == [b"event"]


def test_only_the_deduplicating_queue_drops_the_duplicate(connection, unique_name):
    channel = confirmed_channel(connection)
    exchange, dedup, plain = unique_name("fan"), unique_name("dedup"), unique_name("plain")
    channel.exchange_declare(exchange, "fanout")
    channel.queue_declare(dedup, arguments=DEDUP)
    channel.queue_declare(plain)
    channel.queue_bind(dedup, exchange)
    channel.queue_bind(plain, exchange)
    for body in (b"x", b"y"):
        publish(channel, "", body, exchange=exchange, message_id="same")
    assert drain(channel, dedup) == [b"x"]
    assert drain(channel, plain) == [b"x", b"y"]


@pytest.mark.parametrize(
    "arguments",
    [
        {"x-message-deduplication": "yes"},
        {**DEDUP, "x-cache-size": 0},
        {**DEDUP, "x-cache-ttl": -5},
        {**DEDUP, "x-cache-ttl": "1s"},
        {"x-cache-size": 10},
    ],
)
def test_invalid_deduplication_arguments_are_refused_with_406(connection, unique_name, arguments):
    with channel_closed_with(406):
        connection.channel().queue_declare(unique_name("bad"), arguments=arguments)
    with channel_closed_with(406):
        connection.channel().exchange_declare(unique_name("bad"), "direct", arguments=arguments)


def test_a_redeclare_must_keep_the_window_settings(connection, unique_name):
    channel = connection.channel()
    queue = unique_name("dedup")
    channel.queue_declare(queue, arguments={**DEDUP, "x-cache-size": 10})
    channel.queue_declare(queue, arguments={**DEDUP, "x-cache-size": 10})
    with channel_closed_with(406):
        channel.queue_declare(queue, arguments={**DEDUP, "x-cache-size": 11})


@pytest.mark.parametrize("how", ["restart", "kill -9"])
def test_the_window_of_a_durable_queue_and_exchange_survives(fresh_broker, how):
    conn = connect(fresh_broker.amqp_url)
    channel = confirmed_channel(conn)
    channel.queue_declare("jobs", durable=True, arguments={**DEDUP, "x-cache-ttl": 600_000})
    channel.exchange_declare("events", "fanout", durable=True, arguments=DEDUP)
    channel.queue_declare("events-q", durable=True)
    channel.queue_bind("events-q", "events")
    publish(channel, "jobs", b"job", message_id="job-1", delivery_mode=2)
    # Transient messages' keys are kept too: the window belongs to the queue.
    publish(channel, "jobs", b"transient", message_id="job-2")
    publish(channel, "", b"event", exchange="events", message_id="event-1", delivery_mode=2)
    assert get_body(channel, "jobs") == b"job"  # consumed: only its key is left
    # Acks are written with the next group commit, unawaited (a crash before it brings the
    # message back: at least once). A confirmed publish appended after the ack is durable
    # only once the ack is, so its confirm says the ack is on disk before the kill.
    channel.queue_declare("barrier", durable=True)
    publish(channel, "barrier", b"after the ack", delivery_mode=2)
    if how == "restart":
        fresh_broker.restart()
    else:
        crash_restart(fresh_broker)
    conn = connect(fresh_broker.amqp_url)
    channel = confirmed_channel(conn)
    for key in ("job-1", "job-2"):
        publish(channel, "jobs", b"repeat", message_id=key, delivery_mode=2)
    publish(channel, "", b"repeat", exchange="events", message_id="event-1", delivery_mode=2)
    publish(channel, "jobs", b"new", message_id="job-3", delivery_mode=2)
    assert drain(channel, "jobs") == [b"new"]
    assert drain(channel, "events-q") == [b"event"]
    assert message_count(channel, "jobs") == 0
    conn.close()


def test_keys_leave_the_window_in_time_after_a_restart(fresh_broker):
    conn = connect(fresh_broker.amqp_url)
    channel = confirmed_channel(conn)
    channel.queue_declare("q", durable=True, arguments={**DEDUP, "x-cache-ttl": 1500})
    publish(channel, "q", b"1", message_id="k", delivery_mode=2)
    published = time.monotonic()
    fresh_broker.restart()
    conn = connect(fresh_broker.amqp_url)
    channel = confirmed_channel(conn)
    if time.monotonic() - published < 1.4:
        publish(channel, "q", b"2", message_id="k", delivery_mode=2)
    while time.monotonic() - published < 1.6:
        conn.sleep(0.05)
    publish(channel, "q", b"3", message_id="k", delivery_mode=2)
    assert drain(channel, "q") == [b"1", b"3"]
    conn.close()


def test_the_plugins_exchange_type_deduplicates_like_a_fanout(connection, unique_name):
    channel = confirmed_channel(connection)
    exchange, one, two = unique_name("dedup-x"), unique_name("one"), unique_name("two")
    # As in the plugin's own example: the type, and the size as a string.
    channel.exchange_declare(exchange, "x-message-deduplication", arguments={"x-cache-size": "5"})
    for queue in (one, two):
        channel.queue_declare(queue)
        channel.queue_bind(queue, exchange, routing_key="ignored")
    for _ in range(3):
        publish(channel, "any-key", b"hello", exchange=exchange,
                headers={"x-deduplication-header": "md5-of-hello"})
    assert drain(channel, one) == [b"hello"]
    assert drain(channel, two) == [b"hello"]
    channel.exchange_declare(exchange, "x-message-deduplication", arguments={"x-cache-size": "5"})
    with channel_closed_with(406):
        channel.exchange_declare(exchange, "fanout", arguments={"x-cache-size": "5"})
