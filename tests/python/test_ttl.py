"""Message TTL (x-message-ttl, the expiration property) and queue TTL (x-expires): expired
messages leave the queue even when nobody consumes it, dead-lettered with reason
``expired``; an unused queue is deleted."""

import time

import pika
import pytest

from conftest import channel_closed_with, connect, get_body, message_count, publish, restart


def wait_until(connection, done, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        connection.sleep(0.02)


def test_a_queue_ttl_expires_messages_nobody_consumes_into_the_dead_letter_exchange(
    connection, unique_name
):
    channel = connection.channel()
    work, dead = unique_name("work"), unique_name("dead")
    channel.queue_declare(dead)
    channel.queue_declare(
        work,
        arguments={
            "x-message-ttl": 200,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead,
        },
    )
    publish(channel, work, b"stale")
    wait_until(connection, lambda: message_count(channel, dead) == 1)
    assert message_count(channel, work) == 0
    method, properties, body = channel.basic_get(dead, auto_ack=True)
    assert body == b"stale"
    death = properties.headers["x-death"][0]
    assert (death["reason"], death["queue"]) == ("expired", work)


def test_a_per_message_expiration_expires_that_message_only(connection, unique_name):
    channel = connection.channel()
    work = unique_name("work")
    channel.queue_declare(work)
    publish(channel, work, b"short", expiration="100")
    publish(channel, work, b"long")
    connection.sleep(0.4)
    assert get_body(channel, work) == b"long"
    assert get_body(channel, work) is None


def test_the_original_expiration_is_kept_in_x_death_and_removed_from_the_copy(
    connection, unique_name
):
    channel = connection.channel()
    work, dead = unique_name("work"), unique_name("dead")
    channel.queue_declare(dead)
    channel.queue_declare(
        work, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}
    )
    publish(channel, work, b"m", expiration="50")
    wait_until(connection, lambda: message_count(channel, dead) == 1)
    _, properties, _ = channel.basic_get(dead, auto_ack=True)
    assert properties.expiration is None
    assert properties.headers["x-death"][0]["original-expiration"] == "50"


def test_an_invalid_expiration_closes_the_channel_with_406(connection, unique_name):
    channel = connection.channel()
    work = unique_name("work")
    channel.queue_declare(work)
    with channel_closed_with(406):
        publish(channel, work, b"m", expiration="soon")
        channel.queue_declare(work, passive=True)


def test_an_unused_queue_is_deleted_after_its_x_expires(connection, unique_name):
    channel = connection.channel()
    queue = unique_name("temp")
    channel.queue_declare(queue, arguments={"x-expires": 300})
    # Not probed meanwhile: any declare, a passive one too, renews the lease.
    connection.sleep(1.0)
    with channel_closed_with(404):
        connection.channel().queue_declare(queue, passive=True)


def test_a_queue_with_a_consumer_does_not_expire(connection, unique_name):
    channel = connection.channel()
    queue = unique_name("used")
    channel.queue_declare(queue, arguments={"x-expires": 200})
    channel.basic_consume(queue, lambda *args: None)
    connection.sleep(0.6)
    assert connection.channel().queue_declare(queue, passive=True).method.queue == queue


def test_ttl_counts_from_the_original_publish_across_a_restart(fresh_broker):
    conn = connect(fresh_broker.amqp_url)
    channel = conn.channel()
    channel.queue_declare("ttl", durable=True, arguments={"x-message-ttl": 60000})
    channel.queue_declare("short", durable=True, arguments={"x-message-ttl": 1000})
    channel.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2)
    channel.basic_publish("", "ttl", b"kept", props)
    channel.basic_publish("", "short", b"gone", props)
    conn.close()
    restart(fresh_broker)
    conn = connect(fresh_broker.amqp_url)
    channel = conn.channel()
    assert get_body(channel, "ttl") == b"kept"
    wait_until(conn, lambda: message_count(channel, "short") == 0)
    conn.close()
