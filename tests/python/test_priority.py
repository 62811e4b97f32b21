"""Priority queues (x-max-priority): higher priorities first, FIFO within a priority,
priorities above the maximum count as the maximum; the order holds across a restart."""

import pika

from conftest import connect, get_body, restart

PUBLISHED = [(1, b"p1"), (5, b"p5a"), (10, b"p10"), (0, b"p0"), (5, b"p5b"), (20, b"p20")]
EXPECTED = [b"p10", b"p20", b"p5a", b"p5b", b"p1", b"p0"]


def publish_all(connection, queue, **properties):
    channel = connection.channel()
    channel.confirm_delivery()
    for priority, body in PUBLISHED:
        props = pika.BasicProperties(priority=priority, **properties)
        channel.basic_publish("", queue, body, props)
    channel.close()


def test_higher_priorities_are_delivered_first_and_fifo_within_one(connection, unique_name):
    channel = connection.channel()
    queue = unique_name("prio")
    channel.queue_declare(queue, arguments={"x-max-priority": 10})
    publish_all(connection, queue)
    assert [get_body(channel, queue) for _ in range(7)] == EXPECTED + [None]


def test_without_x_max_priority_the_priority_property_is_ignored(connection, unique_name):
    channel = connection.channel()
    queue = unique_name("fifo")
    channel.queue_declare(queue)
    publish_all(connection, queue)
    assert [get_body(channel, queue) for _ in range(6)] == [body for _, body in PUBLISHED]


def test_a_consumer_gets_the_highest_priority_first(connection, unique_name):
    channel = connection.channel()
    queue = unique_name("prio")
    channel.queue_declare(queue, arguments={"x-max-priority": 10})
    publish_all(connection, queue)
    got = []
    channel.basic_qos(prefetch_count=1)

    def on_message(ch, method, properties, body):
        got.append(body)
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(queue, on_message)
    deadline = 50
    while len(got) < 6 and deadline:
        connection.process_data_events(time_limit=0.1)
        deadline -= 1
    assert got == EXPECTED


def test_priority_order_survives_a_restart(fresh_broker):
    conn = connect(fresh_broker.amqp_url)
    conn.channel().queue_declare("prio", durable=True, arguments={"x-max-priority": 10})
    publish_all(conn, "prio", delivery_mode=2)
    conn.close()
    restart(fresh_broker)
    conn = connect(fresh_broker.amqp_url)
    channel = conn.channel()
    assert [get_body(channel, "prio") for _ in range(7)] == EXPECTED + [None]
    conn.close()
