"""Postroom's retry with backoff (x-retry-* queue arguments): a nack or reject with
requeue=true waits out an exponential backoff, other messages keep flowing, and with
x-delivery-limit the message ends in the dead-letter exchange. These are Postroom
extensions, so the tests skip against another broker."""

import decimal
import os
import time

import pytest

from conftest import publish

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("AMQP_URL")), reason="x-retry-* are Postroom extensions"
)


def wait_get(channel, queue, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        method, properties, body = channel.basic_get(queue)
        if method is not None:
            return method, properties, body
        channel.connection.sleep(0.01)
    raise AssertionError(f"nothing in {queue} within {timeout} s")


def test_a_nacked_message_comes_back_after_its_backoff_while_others_flow(channel, unique_name):
    queue = unique_name("jobs")
    channel.queue_declare(
        queue,
        arguments={
            "x-retry-initial-delay": 300,
            # pika cannot send floats in tables: integers and decimals work.
            "x-retry-multiplier": 2,
            "x-retry-jitter": decimal.Decimal("0.0"),
        },
    )
    publish(channel, queue, b"flaky")
    publish(channel, queue, b"fine")
    method, _, body = wait_get(channel, queue)
    assert body == b"flaky"
    nacked_at = time.monotonic()
    channel.basic_nack(method.delivery_tag, requeue=True)
    method, _, body = wait_get(channel, queue)
    assert body == b"fine", "the message behind the retried one is not held up"
    channel.basic_ack(method.delivery_tag)
    method, properties, body = wait_get(channel, queue)
    waited = time.monotonic() - nacked_at
    assert body == b"flaky"
    assert method.redelivered
    assert properties.headers["x-delivery-count"] == 1
    assert waited >= 0.29, f"came back after {waited:.3f} s, before its 300 ms backoff"
    # The second retry waits twice as long.
    channel.basic_reject(method.delivery_tag, requeue=True)
    rejected_at = time.monotonic()
    method, properties, _ = wait_get(channel, queue)
    assert time.monotonic() - rejected_at >= 0.59
    assert properties.headers["x-delivery-count"] == 2
    channel.basic_ack(method.delivery_tag)


def test_retries_end_in_the_dead_letter_exchange_after_the_delivery_limit(channel, unique_name):
    queue, dead = unique_name("jobs"), unique_name("dead")
    channel.queue_declare(dead)
    channel.queue_declare(
        queue,
        arguments={
            "x-retry-initial-delay": 20,
            "x-delivery-limit": 2,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead,
        },
    )
    publish(channel, queue, b"poison")
    for _ in range(3):
        method, _, _ = wait_get(channel, queue)
        channel.basic_nack(method.delivery_tag, requeue=True)
    method, properties, body = wait_get(channel, dead)
    assert body == b"poison"
    assert properties.headers["x-death"][0]["reason"] == "delivery_limit"
    assert channel.basic_get(queue)[0] is None


def test_three_nacks_wait_longer_each_time_then_dead_letter_with_x_death(channel, unique_name):
    queue, dead = unique_name("jobs"), unique_name("dead")
    channel.queue_declare(dead)
    channel.queue_declare(
        queue,
        arguments={
            "x-retry-initial-delay": 150,
            "x-retry-multiplier": 2,
            "x-retry-jitter": decimal.Decimal("0.1"),
            "x-delivery-limit": 3,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead,
        },
    )
    publish(channel, queue, b"poison", message_id="p-1")
    arrivals = []
    for _ in range(4):
        method, properties, _ = wait_get(channel, queue)
        arrivals.append((time.monotonic(), (properties.headers or {}).get("x-delivery-count", 0)))
        channel.basic_nack(method.delivery_tag, requeue=True)
    assert [count for _, count in arrivals] == [0, 1, 2, 3]
    waits = [b[0] - a[0] for a, b in zip(arrivals, arrivals[1:])]
    # 150, 300, 600 ms, each within its 10 % jitter (and what a loaded machine adds).
    for n, wait in enumerate(waits):
        assert wait >= 0.15 * 2**n * 0.9 - 0.01, f"retry {n + 1} after {wait:.3f} s"
    assert waits[0] < waits[1] < waits[2], waits
    died_at = time.time()
    _, properties, body = wait_get(channel, dead)
    assert body == b"poison"
    assert properties.message_id == "p-1"
    death = properties.headers["x-death"][0]
    assert (death["reason"], death["queue"], death["count"]) == ("delivery_limit", queue, 1)
    assert death["exchange"] == "" and death["routing-keys"] == [queue]
    assert abs(death["time"].timestamp() - died_at) < 5
    assert properties.headers["x-first-death-reason"] == "delivery_limit"
    assert properties.headers["x-last-death-queue"] == queue


def test_a_scheduled_retry_survives_kill_9_and_keeps_its_backoff(fresh_broker):
    from conftest import connect, crash_restart

    conn = connect(fresh_broker.amqp_url)
    channel = conn.channel()
    channel.queue_declare(
        "jobs",
        durable=True,
        arguments={"x-retry-initial-delay": 2500, "x-retry-jitter": decimal.Decimal("0")},
    )
    channel.confirm_delivery()
    publish(channel, "jobs", b"flaky", delivery_mode=2)
    method, _, _ = wait_get(channel, "jobs")
    channel.basic_nack(method.delivery_tag, requeue=True)
    nacked_at = time.monotonic()
    # The retry's schedule is written with the next group commit; nobody waits for it. A
    # confirmed publish after the nack is durable only once the schedule is: its confirm
    # says the schedule is on disk before the kill.
    channel.queue_declare("barrier", durable=True)
    publish(channel, "barrier", b"after the nack", delivery_mode=2)
    crash_restart(fresh_broker)
    conn = connect(fresh_broker.amqp_url)
    channel = conn.channel()
    method, properties, body = wait_get(channel, "jobs")
    assert body == b"flaky"
    assert method.redelivered
    assert properties.headers["x-delivery-count"] == 1
    assert time.monotonic() - nacked_at >= 2.45, "the backoff was lost in the crash"
    channel.basic_ack(method.delivery_tag)
    conn.close()


def test_retry_delays_stop_growing_at_the_max_delay(channel, unique_name):
    queue = unique_name("jobs")
    channel.queue_declare(
        queue,
        arguments={
            "x-retry-initial-delay": 100,
            "x-retry-multiplier": 10,
            "x-retry-max-delay": 250,
            "x-retry-jitter": decimal.Decimal("0"),
        },
    )
    publish(channel, queue, b"flaky")
    method, _, _ = wait_get(channel, queue)
    waits = []
    for _ in range(3):
        channel.basic_nack(method.delivery_tag, requeue=True)
        nacked = time.monotonic()
        method, _, _ = wait_get(channel, queue)
        waits.append(time.monotonic() - nacked)
    channel.basic_ack(method.delivery_tag)
    # 100 ms, then 1000 and 10 000 ms capped at 250.
    assert waits[0] >= 0.095 and waits[1] >= 0.245 and waits[2] >= 0.245, waits
    assert waits[2] < 2.0, f"the cap did not hold: {waits}"


@pytest.mark.parametrize(
    "arguments",
    [
        {"x-retry-initial-delay": -1},
        {"x-retry-initial-delay": "100"},
        {"x-retry-initial-delay": 10, "x-retry-multiplier": decimal.Decimal("0.5")},
        {"x-retry-initial-delay": 10, "x-retry-jitter": 2},
        {"x-retry-initial-delay": 10, "x-retry-max-delay": -3},
        {"x-retry-multiplier": 2},
    ],
)
def test_invalid_retry_arguments_are_refused_with_406(connection, unique_name, arguments):
    from conftest import channel_closed_with

    with channel_closed_with(406):
        connection.channel().queue_declare(unique_name("bad"), arguments=arguments)
