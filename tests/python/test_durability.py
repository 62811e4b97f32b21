"""What survives a broker restart (SIGTERM, then start again on the same data directory).

Each test gets a broker of its own (``fresh_broker``). Against an external broker these tests
need AMQP_RESTART_CMD (see README.md).
"""

import pika

from conftest import channel_closed_with, connect, get_body, message_count, restart, unique_name


def _with_channel(broker, action):
    conn = connect(broker.amqp_url)
    try:
        return action(conn.channel())
    finally:
        if conn.is_open:
            conn.close()


def _cleanup(broker, *names):
    def delete(ch):
        for name in names:
            ch.queue_delete(name)
            ch.exchange_delete(name)
    _with_channel(broker, delete)


def test_durable_queue_keeps_confirmed_persistent_messages_across_a_restart(fresh_broker):
    queue = unique_name("durable")

    def publish_all(ch):
        ch.queue_declare(queue, durable=True)
        ch.confirm_delivery()
        for i in range(50):
            ch.basic_publish("", queue, f"m{i}".encode(), properties=pika.BasicProperties(
                delivery_mode=2, content_type="text/plain", headers={"i": i}))

    _with_channel(fresh_broker, publish_all)
    restart(fresh_broker)

    def read_all(ch):
        assert message_count(ch, queue) == 50
        bodies = []
        for i in range(50):
            _method, properties, body = ch.basic_get(queue, auto_ack=True)
            assert (properties.delivery_mode, properties.content_type, properties.headers) == (
                2, "text/plain", {"i": i})
            bodies.append(body)
        return bodies

    try:
        assert _with_channel(fresh_broker, read_all) == [f"m{i}".encode() for i in range(50)]
    finally:
        _cleanup(fresh_broker, queue)


def test_acked_messages_stay_acked_across_a_restart(fresh_broker):
    queue = unique_name("durable")

    def publish_and_ack_some(ch):
        ch.queue_declare(queue, durable=True)
        ch.confirm_delivery()
        for i in range(4):
            ch.basic_publish("", queue, f"m{i}".encode(),
                             properties=pika.BasicProperties(delivery_mode=2))
        ch.basic_get(queue, auto_ack=True)
        method, _props, _body = ch.basic_get(queue, auto_ack=False)
        ch.basic_ack(method.delivery_tag)
        ch.queue_declare(queue, passive=True)  # the ack has been processed

    _with_channel(fresh_broker, publish_and_ack_some)
    restart(fresh_broker)
    try:
        assert _with_channel(fresh_broker, lambda ch: [get_body(ch, queue) for _ in range(3)]) == [
            b"m2", b"m3", None]
    finally:
        _cleanup(fresh_broker, queue)


def test_transient_messages_in_a_durable_queue_are_dropped_by_a_restart(fresh_broker):
    queue = unique_name("durable")

    def publish_mixed(ch):
        ch.queue_declare(queue, durable=True)
        ch.confirm_delivery()
        ch.basic_publish("", queue, b"persistent", properties=pika.BasicProperties(delivery_mode=2))
        ch.basic_publish("", queue, b"transient", properties=pika.BasicProperties(delivery_mode=1))

    _with_channel(fresh_broker, publish_mixed)
    restart(fresh_broker)
    try:
        assert _with_channel(fresh_broker, lambda ch: [get_body(ch, queue), get_body(ch, queue)]) == [
            b"persistent", None]
    finally:
        _cleanup(fresh_broker, queue)


def test_non_durable_queue_is_gone_after_a_restart(fresh_broker):
    queue = unique_name("transient")
    _with_channel(fresh_broker, lambda ch: ch.queue_declare(queue, durable=False))
    restart(fresh_broker)

    def passive(ch):
        with channel_closed_with(404):
            ch.queue_declare(queue, passive=True)

    _with_channel(fresh_broker, passive)


def test_durable_exchange_and_its_bindings_survive_a_restart(fresh_broker):
    exchange, queue = unique_name("durable-ex"), unique_name("durable-q")

    def declare(ch):
        ch.exchange_declare(exchange, exchange_type="topic", durable=True)
        ch.queue_declare(queue, durable=True)
        ch.queue_bind(queue, exchange, routing_key="orders.#")

    _with_channel(fresh_broker, declare)
    restart(fresh_broker)

    def route(ch):
        ch.exchange_declare(exchange, passive=True)
        ch.basic_publish(exchange, "orders.created", b"routed")
        return get_body(ch, queue)

    try:
        assert _with_channel(fresh_broker, route) == b"routed"
    finally:
        _cleanup(fresh_broker, exchange, queue)
