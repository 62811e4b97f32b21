"""Dead Letter Channel and queue limits: x-dead-letter-exchange/-routing-key with RabbitMQ's
x-death history, x-delivery-limit with x-delivery-count, x-max-length(-bytes) with x-overflow,
and validation of those arguments at declare time."""

import time

import pika
import pytest

from conftest import channel_closed_with, consume, get_body, publish, publish_confirmed


def dead_letter_setup(channel, unique_name, **arguments):
    """A work queue dead-lettering to a fanout exchange bound to a dead-letter queue."""
    work, dlx, dead = unique_name("work"), unique_name("dlx"), unique_name("dead")
    channel.exchange_declare(dlx, "fanout")
    channel.queue_declare(dead)
    channel.queue_bind(dead, dlx)
    channel.queue_declare(work, arguments={"x-dead-letter-exchange": dlx, **arguments})
    return work, dlx, dead


def get(channel, queue_name, auto_ack=True, timeout=5.0):
    """The next message of ``queue_name``, waiting for it: RabbitMQ dead-letters and returns
    messages to quorum queues asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        method, properties, body = channel.basic_get(queue_name, auto_ack=auto_ack)
        if method is not None:
            return method, properties, body
        assert time.monotonic() < deadline, f"nothing in {queue_name}"
        channel.connection.sleep(0.02)


def test_a_rejected_message_goes_to_the_dead_letter_exchange_with_its_x_death(
    channel, unique_name
):
    work, dlx, dead = dead_letter_setup(channel, unique_name)
    publish(channel, work, b"poison", headers={"k": "v"})
    method, _, _ = channel.basic_get(work)
    channel.basic_reject(method.delivery_tag, requeue=False)
    method, properties, body = get(channel, dead)
    assert body == b"poison"
    assert method.exchange == dlx
    assert method.routing_key == work
    headers = properties.headers
    assert headers["k"] == "v"
    (death,) = headers["x-death"]
    assert death["count"] == 1
    assert death["reason"] == "rejected"
    assert death["queue"] == work
    assert death["exchange"] == ""
    assert death["routing-keys"] == [work]
    assert headers["x-first-death-reason"] == "rejected"
    assert headers["x-first-death-queue"] == work
    assert get_body(channel, work) is None


def test_a_dead_letter_routing_key_replaces_the_original_one(channel, unique_name):
    work, dlx = unique_name("work"), unique_name("dlx")
    dead = unique_name("dead")
    channel.exchange_declare(dlx, "direct")
    channel.queue_declare(dead)
    channel.queue_bind(dead, dlx, routing_key="failed")
    channel.queue_declare(
        work, arguments={"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "failed"}
    )
    publish(channel, work, b"m")
    method, _, _ = channel.basic_get(work)
    channel.basic_nack(method.delivery_tag, requeue=False)
    method, _, body = get(channel, dead)
    assert (body, method.routing_key) == (b"m", "failed")


def test_without_a_dead_letter_exchange_a_rejected_message_is_dropped(channel, unique_name):
    work = unique_name("work")
    channel.queue_declare(work)
    publish(channel, work, b"m")
    method, _, _ = channel.basic_get(work)
    channel.basic_reject(method.delivery_tag, requeue=False)
    assert get_body(channel, work) is None


def test_dying_twice_in_the_same_queue_counts_up_one_x_death_entry(channel, unique_name):
    work, dlx, dead = dead_letter_setup(channel, unique_name)
    publish(channel, work, b"m")
    for _ in range(2):
        method, _, _ = get(channel, work, auto_ack=False)
        channel.basic_reject(method.delivery_tag, requeue=False)
        _, properties, body = get(channel, dead)
        # Send it back to the work queue with its history, as a redrive would.
        channel.basic_publish("", work, body, properties)
    method, _, _ = get(channel, work, auto_ack=False)
    channel.basic_reject(method.delivery_tag, requeue=False)
    _, properties, _ = get(channel, dead)
    (death,) = properties.headers["x-death"]
    assert death["count"] == 3


def test_past_the_delivery_limit_a_message_is_dead_lettered_with_its_delivery_count(
    channel, unique_name
):
    work, dlx, dead = unique_name("work"), unique_name("dlx"), unique_name("dead")
    channel.exchange_declare(dlx, "fanout")
    channel.queue_declare(dead)
    channel.queue_bind(dead, dlx)
    # A durable quorum queue, as RabbitMQ requires for a delivery limit.
    arguments = {"x-dead-letter-exchange": dlx, "x-delivery-limit": 2, "x-queue-type": "quorum"}
    channel.queue_declare(work, durable=True, arguments=arguments)
    publish(channel, work, b"m")
    seen = []
    for _ in range(3):
        method, properties, _ = get(channel, work, auto_ack=False)
        seen.append((properties.headers or {}).get("x-delivery-count", 0))
        channel.basic_nack(method.delivery_tag, requeue=True)
    assert seen == [0, 1, 2]
    assert get_body(channel, work) is None
    _, properties, body = get(channel, dead)
    assert body == b"m"
    assert properties.headers["x-death"][0]["reason"] == "delivery_limit"


def test_drop_head_dead_letters_the_oldest_messages_as_maxlen(channel, unique_name):
    work, dlx, dead = dead_letter_setup(channel, unique_name, **{"x-max-length": 2})
    for n in range(4):
        publish(channel, work, b"%d" % n)
    assert [get_body(channel, work) for _ in range(3)] == [b"2", b"3", None]
    method, properties, body = get(channel, dead)
    assert body == b"0"
    assert properties.headers["x-death"][0]["reason"] == "maxlen"
    assert get(channel, dead)[2] == b"1"


def test_max_length_bytes_counts_body_bytes(channel, unique_name):
    work = unique_name("work")
    channel.queue_declare(work, arguments={"x-max-length-bytes": 10})
    for body in (b"aaaa", b"bbbb", b"cccc"):
        publish(channel, work, body)
    assert [get_body(channel, work) for _ in range(3)] == [b"bbbb", b"cccc", None]


def test_reject_publish_nacks_the_publisher_and_keeps_the_queue(connection, unique_name):
    channel = connection.channel()
    work = unique_name("work")
    channel.queue_declare(work, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    channel.confirm_delivery()
    channel.basic_publish("", work, b"first")
    with pytest.raises(pika.exceptions.NackError):
        channel.basic_publish("", work, b"second")
    assert get_body(channel, work) == b"first"
    assert get_body(channel, work) is None


def test_reject_publish_dlx_dead_letters_the_refused_message(channel, unique_name):
    work, dlx, dead = dead_letter_setup(
        channel, unique_name, **{"x-max-length": 1, "x-overflow": "reject-publish-dlx"}
    )
    publish(channel, work, b"first")
    publish(channel, work, b"second")
    assert get_body(channel, work) == b"first"
    _, properties, body = get(channel, dead)
    assert body == b"second"
    assert properties.headers["x-death"][0]["reason"] == "maxlen"


@pytest.mark.parametrize(
    "arguments",
    [
        {"x-max-length": -1},
        {"x-max-length": "ten"},
        {"x-overflow": "drop-tail"},
        {"x-max-priority": 256},
        {"x-message-ttl": -5},
        {"x-expires": 0},
        {"x-dead-letter-exchange": 5},
        {"x-delivery-limit": "three"},
    ],
)
def test_invalid_queue_arguments_are_refused_with_406(channel, unique_name, arguments):
    with channel_closed_with(406):
        channel.queue_declare(unique_name("bad"), arguments=arguments)


def test_dead_lettered_persistent_messages_survive_a_restart(fresh_broker):
    from conftest import connect, restart

    conn = connect(fresh_broker.amqp_url)
    channel = conn.channel()
    channel.exchange_declare("dlx", "fanout", durable=True)
    channel.queue_declare("dead", durable=True)
    channel.queue_bind("dead", "dlx")
    channel.queue_declare("work", durable=True, arguments={"x-dead-letter-exchange": "dlx"})
    publish_confirmed(conn, "work", [b"a", b"b"], delivery_mode=2)
    for _ in range(2):
        method, _, _ = channel.basic_get("work")
        channel.basic_reject(method.delivery_tag, requeue=False)
    conn.close()
    restart(fresh_broker)
    conn = connect(fresh_broker.amqp_url)
    channel = conn.channel()
    bodies = [get_body(channel, "dead") for _ in range(3)]
    assert bodies == [b"a", b"b", None]
    assert get_body(channel, "work") is None
    conn.close()


def test_dead_lettering_loses_nothing_when_the_broker_is_killed(fresh_broker):
    """Each rejected persistent message is in the work queue or the dead-letter queue after
    a kill -9 right behind the rejects: dead-lettering is durable."""
    from conftest import connect, crash_restart

    conn = connect(fresh_broker.amqp_url)
    channel = conn.channel()
    channel.queue_declare("dead", durable=True)
    channel.queue_declare(
        "work",
        durable=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"},
    )
    bodies = [str(i).encode() for i in range(200)]
    publish_confirmed(conn, "work", bodies, delivery_mode=2)
    channel.basic_qos(prefetch_count=200)
    received = []
    channel.basic_consume("work", lambda ch, m, p, b: received.append(m.delivery_tag))
    deadline = time.monotonic() + 10
    while len(received) < 200 and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    assert len(received) == 200
    for tag in received:
        channel.basic_reject(tag, requeue=False)
    conn.process_data_events(time_limit=0)
    crash_restart(fresh_broker)
    conn = connect(fresh_broker.amqp_url)
    channel = conn.channel()
    found = []
    for queue in ("work", "dead"):
        while (body := get_body(channel, queue)) is not None:
            found.append(body)
    assert sorted(set(found)) == sorted(bodies), "a dead-lettered message was lost"
    conn.close()
