"""Delayed messages: an exchange of type x-delayed-message (with x-delayed-type, the RabbitMQ
plugin's convention) or with x-delayed-exchange=true (LavinMQ's) holds a message with an
x-delay header for that many ms, durably, then routes it. The plugin is not part of a stock
RabbitMQ, so these tests skip against another broker."""

import os
import time

import pika
import pytest

from conftest import channel_closed_with, connect, crash_restart, get_body, restart

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("AMQP_URL")), reason="needs the delayed-message exchange"
)


def delayed_exchange(channel, name, queue, kind="direct"):
    channel.exchange_declare(name, "x-delayed-message", arguments={"x-delayed-type": kind})
    channel.queue_declare(queue)
    channel.queue_bind(queue, name, routing_key="k")


def publish_delayed(channel, exchange, body, delay, **properties):
    headers = {"x-delay": delay} if delay is not None else None
    props = pika.BasicProperties(headers=headers, **properties)
    channel.basic_publish(exchange, "k", body, props)


def wait_for_body(connection, channel, queue, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = get_body(channel, queue)
        if body is not None:
            return body
        connection.sleep(0.01)
    raise AssertionError(f"nothing in {queue}")


def test_a_message_with_x_delay_is_routed_once_its_delay_is_over(connection, unique_name):
    channel = connection.channel()
    exchange, queue = unique_name("delayed"), unique_name("q")
    delayed_exchange(channel, exchange, queue)
    published = time.monotonic()
    publish_delayed(channel, exchange, b"later", 300)
    assert get_body(channel, queue) is None
    assert wait_for_body(connection, channel, queue) == b"later"
    assert time.monotonic() - published >= 0.29


def test_shorter_delays_overtake_longer_ones(connection, unique_name):
    channel = connection.channel()
    exchange, queue = unique_name("delayed"), unique_name("q")
    delayed_exchange(channel, exchange, queue, kind="fanout")
    publish_delayed(channel, exchange, b"slow", 600)
    publish_delayed(channel, exchange, b"fast", 150)
    assert wait_for_body(connection, channel, queue) == b"fast"
    assert wait_for_body(connection, channel, queue) == b"slow"


def test_without_x_delay_a_message_is_routed_at_once(connection, unique_name):
    channel = connection.channel()
    exchange, queue = unique_name("delayed"), unique_name("q")
    delayed_exchange(channel, exchange, queue)
    publish_delayed(channel, exchange, b"now", None)
    publish_delayed(channel, exchange, b"negative", -100)
    assert get_body(channel, queue) == b"now"
    assert get_body(channel, queue) == b"negative"


def test_x_delayed_exchange_true_delays_on_any_exchange_type(connection, unique_name):
    channel = connection.channel()
    exchange, queue = unique_name("lavin"), unique_name("q")
    channel.exchange_declare(exchange, "topic", arguments={"x-delayed-exchange": True})
    channel.queue_declare(queue)
    channel.queue_bind(queue, exchange, routing_key="#")
    publish_delayed(channel, exchange, b"later", 200)
    assert get_body(channel, queue) is None
    assert wait_for_body(connection, channel, queue) == b"later"


def test_a_delayed_exchange_needs_a_valid_x_delayed_type(connection, unique_name):
    with channel_closed_with(406):
        connection.channel().exchange_declare(unique_name("bad"), "x-delayed-message")


def test_a_redeclare_must_name_the_same_type(connection, unique_name):
    channel = connection.channel()
    exchange = unique_name("delayed")
    args = {"x-delayed-type": "direct"}
    channel.exchange_declare(exchange, "x-delayed-message", arguments=args)
    channel.exchange_declare(exchange, "x-delayed-message", arguments=args)
    with channel_closed_with(406):
        channel.exchange_declare(exchange, "direct", arguments=args)


def test_held_persistent_messages_survive_a_restart(fresh_broker):
    conn = connect(fresh_broker.amqp_url)
    channel = conn.channel()
    channel.exchange_declare(
        "delayed", "x-delayed-message", durable=True, arguments={"x-delayed-type": "direct"}
    )
    channel.queue_declare("q", durable=True)
    channel.queue_bind("q", "delayed", routing_key="k")
    channel.confirm_delivery()
    publish_delayed(channel, "delayed", b"kept", 1500, delivery_mode=2)
    conn.close()
    restart(fresh_broker)
    conn = connect(fresh_broker.amqp_url)
    channel = conn.channel()
    assert wait_for_body(conn, channel, "q") == b"kept"
    conn.close()


def test_a_released_message_carries_its_delay_negated(connection, unique_name):
    channel = connection.channel()
    exchange, queue = unique_name("delayed"), unique_name("q")
    delayed_exchange(channel, exchange, queue)
    publish_delayed(channel, exchange, b"later", 100)
    deadline = time.monotonic() + 10
    while True:
        method, properties, _ = channel.basic_get(queue, auto_ack=True)
        if method is not None:
            break
        assert time.monotonic() < deadline, "never released"
        connection.sleep(0.01)
    # The plugin's way of telling a consumer the message was delayed.
    assert properties.headers["x-delay"] == -100


def test_deleting_a_delayed_exchange_drops_what_it_holds(connection, unique_name):
    channel = connection.channel()
    exchange, queue = unique_name("delayed"), unique_name("q")
    delayed_exchange(channel, exchange, queue)
    publish_delayed(channel, exchange, b"gone", 200)
    channel.exchange_delete(exchange)
    # Declared again under the same name: the old hold does not leak into the new one.
    delayed_exchange(channel, exchange, queue)
    publish_delayed(channel, exchange, b"new", 250)
    assert wait_for_body(connection, channel, queue) == b"new"
    connection.sleep(0.2)
    assert get_body(channel, queue) is None


def test_held_messages_survive_kill_9_and_keep_their_due_times(fresh_broker):
    conn = connect(fresh_broker.amqp_url)
    channel = conn.channel()
    channel.exchange_declare(
        "delayed", "x-delayed-message", durable=True, arguments={"x-delayed-type": "direct"}
    )
    channel.queue_declare("q", durable=True)
    channel.queue_bind("q", "delayed", routing_key="k")
    channel.confirm_delivery()
    published = time.monotonic()
    for body, delay in [(b"third", 4000), (b"first", 100), (b"second", 2500)]:
        publish_delayed(channel, "delayed", body, delay, delivery_mode=2)
    crash_restart(fresh_broker)
    conn = connect(fresh_broker.amqp_url)
    channel = conn.channel()
    assert wait_for_body(conn, channel, "q") == b"first"
    assert wait_for_body(conn, channel, "q") == b"second"
    assert time.monotonic() - published >= 2.45
    assert wait_for_body(conn, channel, "q") == b"third"
    assert time.monotonic() - published >= 3.95
    conn.close()


def test_no_confirmed_delayed_message_is_lost_or_early_across_kill_9_mid_release(fresh_broker):
    import random

    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    conn = connect(fresh_broker.amqp_url)
    channel = conn.channel()
    channel.exchange_declare(
        "delayed", "x-delayed-message", durable=True, arguments={"x-delayed-type": "direct"}
    )
    channel.queue_declare("q", durable=True)
    channel.queue_bind("q", "delayed", routing_key="k")
    channel.confirm_delivery()
    due = {}
    start = time.monotonic()
    for i in range(1000):
        delay = rng.randrange(300, 3000)
        publish_delayed(channel, "delayed", str(i).encode(), delay, delivery_mode=2)
        due[str(i).encode()] = start + delay / 1000
    # Crash while part of them have been released and part are still held.
    while time.monotonic() - start < 1.5:
        conn.sleep(0.05)
    crash_restart(fresh_broker)
    conn = connect(fresh_broker.amqp_url)
    channel = conn.channel()
    seen = set()
    deadline = time.monotonic() + 20
    while len(seen) < len(due) and time.monotonic() < deadline:
        method, _, body = channel.basic_get("q", auto_ack=True)
        if method is None:
            conn.sleep(0.02)
            continue
        # Routed (at least) once due; a crash may repeat a release, never advance it.
        assert time.monotonic() >= due[body] - 0.05, f"seed {seed}: {body} early"
        seen.add(body)
    assert seen == set(due), f"seed {seed}: lost {sorted(set(due) - seen)[:10]}"
    conn.close()


def test_a_delay_past_the_plugins_limit_routes_at_once(connection, unique_name):
    channel = connection.channel()
    exchange, queue = unique_name("delayed"), unique_name("q")
    delayed_exchange(channel, exchange, queue)
    publish_delayed(channel, exchange, b"too far", 2**32)
    assert get_body(channel, queue) == b"too far"
