"""basic.*: publish, get, consume, qos, ack / nack / reject / recover, cancel, returns, properties."""

import datetime
from decimal import Decimal

import pika
import pika.exceptions

from conftest import (
    channel_closed_with,
    consume,
    get_body,
    idle,
    message_count,
    publish,
    publish_confirmed,
    pump,
    wait_for_message_count,
)


def _fill(channel, queue, count, prefix="m"):
    """Declare ``queue`` and enqueue ``count`` messages (confirmed, so they are all there)."""
    channel.queue_declare(queue)
    publish_confirmed(channel.connection, queue, [f"{prefix}{i}".encode() for i in range(count)])


def _collector(store):
    def on_message(_channel, method, properties, body):
        store.append((method, properties, body))
    return on_message


# ---- get ---------------------------------------------------------------------------------------


def test_basic_get_on_an_empty_queue_returns_none(channel, unique_name):
    queue = unique_name("q")
    channel.queue_declare(queue)
    assert channel.basic_get(queue) == (None, None, None)


def test_basic_get_returns_the_message_and_the_count_still_ready(channel, unique_name):
    queue = unique_name("q")
    _fill(channel, queue, 3)
    method, _properties, body = channel.basic_get(queue, auto_ack=False)
    assert body == b"m0"
    assert method.message_count == 2
    assert method.redelivered is False
    assert method.routing_key == queue
    assert method.exchange == ""
    channel.basic_ack(method.delivery_tag)


def test_basic_get_without_auto_ack_keeps_the_message_until_acked(connection, unique_name):
    queue = unique_name("q")
    ch = connection.channel()
    _fill(ch, queue, 1)
    method, _properties, _body = ch.basic_get(queue, auto_ack=False)
    ch.close()  # never acked: returns to the queue
    other = connection.channel()
    assert wait_for_message_count(other, queue, 1) == 1
    method, _properties, body = other.basic_get(queue, auto_ack=False)
    assert (body, method.redelivered) == (b"m0", True)
    other.basic_ack(method.delivery_tag)
    other.close()
    assert message_count(connection.channel(), queue) == 0


def test_basic_get_with_auto_ack_removes_the_message(connection, unique_name):
    queue = unique_name("q")
    ch = connection.channel()
    _fill(ch, queue, 1)
    assert get_body(ch, queue) == b"m0"
    ch.close()
    assert message_count(connection.channel(), queue) == 0


def test_basic_get_on_a_missing_queue_closes_the_channel_with_404(channel, unique_name):
    with channel_closed_with(404):
        channel.basic_get(unique_name("missing"))


def test_delivery_tags_start_at_one_and_increase_per_channel(connection, unique_name):
    queue = unique_name("q")
    first = connection.channel()
    _fill(first, queue, 4)
    tags = [first.basic_get(queue, auto_ack=False)[0].delivery_tag for _ in range(2)]
    second = connection.channel()
    tags += [second.basic_get(queue, auto_ack=False)[0].delivery_tag for _ in range(2)]
    assert tags == [1, 2, 1, 2]


# ---- consume -----------------------------------------------------------------------------------


def test_consumer_with_manual_ack_keeps_unacked_messages_until_acked(connection, unique_name):
    queue = unique_name("q")
    ch = connection.channel()
    _fill(ch, queue, 2)
    received = consume(ch, queue, 2, auto_ack=False)
    assert [body for _, _, body in received] == [b"m0", b"m1"]
    ch.basic_ack(received[0][0].delivery_tag)
    ch.close()
    other = connection.channel()
    assert wait_for_message_count(other, queue, 1) == 1
    assert get_body(other, queue) == b"m1"


def test_no_ack_consumer_gets_messages_that_are_settled_on_delivery(connection, unique_name):
    queue = unique_name("q")
    ch = connection.channel()
    _fill(ch, queue, 3)
    received = consume(ch, queue, 3, auto_ack=True)
    assert [body for _, _, body in received] == [b"m0", b"m1", b"m2"]
    ch.close()
    assert message_count(connection.channel(), queue) == 0


def test_consumer_receives_messages_published_after_it_subscribed(channel, unique_name):
    queue = unique_name("q")
    channel.queue_declare(queue)
    received = []
    tag = channel.basic_consume(queue, _collector(received), auto_ack=True)
    publish(channel, queue, b"later")
    assert pump(channel.connection, lambda: received)
    method, _properties, body = received[0]
    assert (body, method.consumer_tag, method.routing_key) == (b"later", tag, queue)


def test_client_chosen_consumer_tag_is_used_in_deliveries(channel, unique_name):
    queue = unique_name("q")
    _fill(channel, queue, 1)
    received = []
    tag = channel.basic_consume(queue, _collector(received), auto_ack=True,
                                consumer_tag="my-consumer-tag")
    assert tag == "my-consumer-tag"
    assert pump(channel.connection, lambda: received)
    assert received[0][0].consumer_tag == "my-consumer-tag"


def test_consuming_from_a_missing_queue_closes_the_channel_with_404(channel, unique_name):
    with channel_closed_with(404):
        channel.basic_consume(unique_name("missing"), lambda *args: None)


def test_two_consumers_on_one_queue_receive_messages_round_robin(channel, unique_name):
    queue = unique_name("q")
    channel.queue_declare(queue)
    first, second = [], []
    channel.basic_consume(queue, _collector(first), auto_ack=True)
    channel.basic_consume(queue, _collector(second), auto_ack=True)
    for i in range(10):
        publish(channel, queue, f"m{i}".encode())
    assert pump(channel.connection, lambda: len(first) + len(second) == 10)
    assert [b for _, _, b in first] == [b"m0", b"m2", b"m4", b"m6", b"m8"]
    assert [b for _, _, b in second] == [b"m1", b"m3", b"m5", b"m7", b"m9"]


def test_a_queue_delivers_a_thousand_messages_in_publish_order(channel, unique_name):
    queue = unique_name("q")
    _fill(channel, queue, 1000)
    received = consume(channel, queue, 1000, timeout=20)
    assert [body for _, _, body in received] == [f"m{i}".encode() for i in range(1000)]


def test_basic_cancel_stops_deliveries_to_that_consumer(channel, unique_name):
    queue = unique_name("q")
    channel.queue_declare(queue)
    received = []
    tag = channel.basic_consume(queue, _collector(received), auto_ack=True)
    publish(channel, queue, b"before")
    assert pump(channel.connection, lambda: received)
    channel.basic_cancel(tag)
    publish(channel, queue, b"after")
    idle(channel.connection, 0.3)
    assert [body for _, _, body in received] == [b"before"]
    assert get_body(channel, queue) == b"after"


def test_deleting_a_consumed_queue_cancels_the_consumer_from_the_broker(connection, unique_name):
    queue = unique_name("q")
    ch = connection.channel()
    ch.queue_declare(queue)
    cancels = []
    ch.add_on_cancel_callback(cancels.append)
    tag = ch.basic_consume(queue, lambda *args: None)
    connection.channel().queue_delete(queue)
    assert pump(connection, lambda: cancels)
    assert isinstance(cancels[0].method, pika.spec.Basic.Cancel)
    assert cancels[0].method.consumer_tag == tag
    assert ch.is_open  # only the consumer is gone, not the channel
    ch.queue_declare("", exclusive=True)


def test_exclusive_consumer_refuses_a_second_consumer_with_403(connection, unique_name):
    queue = unique_name("q")
    ch = connection.channel()
    ch.queue_declare(queue)
    ch.basic_consume(queue, lambda *args: None, exclusive=True)
    with channel_closed_with(403):
        connection.channel().basic_consume(queue, lambda *args: None)


def test_exclusive_consume_on_a_queue_that_has_a_consumer_is_refused_with_403(
    connection, unique_name
):
    queue = unique_name("q")
    ch = connection.channel()
    ch.queue_declare(queue)
    ch.basic_consume(queue, lambda *args: None)
    with channel_closed_with(403):
        connection.channel().basic_consume(queue, lambda *args: None, exclusive=True)


# ---- qos ---------------------------------------------------------------------------------------


def test_prefetch_count_limits_unacked_deliveries_until_an_ack(channel, unique_name):
    queue = unique_name("q")
    _fill(channel, queue, 10)
    channel.basic_qos(prefetch_count=3)
    received = []
    channel.basic_consume(queue, _collector(received))
    assert pump(channel.connection, lambda: len(received) >= 3)
    idle(channel.connection, 0.5)
    assert len(received) == 3
    channel.basic_ack(received[0][0].delivery_tag)
    assert pump(channel.connection, lambda: len(received) >= 4)
    idle(channel.connection, 0.5)
    assert [body for _, _, body in received] == [b"m0", b"m1", b"m2", b"m3"]


def test_per_consumer_prefetch_applies_to_each_consumer_separately(channel, unique_name):
    first_queue, second_queue = unique_name("q1"), unique_name("q2")
    _fill(channel, first_queue, 5)
    _fill(channel, second_queue, 5)
    channel.basic_qos(prefetch_count=2)
    first, second = [], []
    channel.basic_consume(first_queue, _collector(first))
    channel.basic_consume(second_queue, _collector(second))
    assert pump(channel.connection, lambda: len(first) >= 2 and len(second) >= 2)
    idle(channel.connection, 0.5)
    assert (len(first), len(second)) == (2, 2)


def test_global_qos_limits_unacked_deliveries_across_all_consumers_of_a_channel(
    channel, unique_name
):
    first_queue, second_queue = unique_name("q1"), unique_name("q2")
    _fill(channel, first_queue, 5)
    _fill(channel, second_queue, 5)
    channel.basic_qos(prefetch_count=3, global_qos=True)
    received = []
    channel.basic_consume(first_queue, _collector(received))
    channel.basic_consume(second_queue, _collector(received))
    assert pump(channel.connection, lambda: len(received) >= 3)
    idle(channel.connection, 0.5)
    assert len(received) == 3
    channel.basic_ack(received[-1][0].delivery_tag)
    assert pump(channel.connection, lambda: len(received) >= 4)
    idle(channel.connection, 0.5)
    assert len(received) == 4


def test_prefetch_does_not_limit_no_ack_consumers(channel, unique_name):
    queue = unique_name("q")
    _fill(channel, queue, 10)
    channel.basic_qos(prefetch_count=1)
    received = consume(channel, queue, 10, auto_ack=True)
    assert len(received) == 10


# ---- ack / nack / reject / recover -------------------------------------------------------------


def test_ack_multiple_acknowledges_every_delivery_up_to_the_tag(connection, unique_name):
    queue = unique_name("q")
    ch = connection.channel()
    _fill(ch, queue, 4)
    tags = [ch.basic_get(queue, auto_ack=False)[0].delivery_tag for _ in range(4)]
    ch.basic_ack(tags[2], multiple=True)
    ch.close()  # only the fourth was unacked
    other = connection.channel()
    assert wait_for_message_count(other, queue, 1) == 1
    assert get_body(other, queue) == b"m3"


def test_ack_with_tag_zero_and_multiple_acknowledges_everything_outstanding(connection, unique_name):
    queue = unique_name("q")
    ch = connection.channel()
    _fill(ch, queue, 3)
    for _ in range(3):
        ch.basic_get(queue, auto_ack=False)
    ch.basic_ack(0, multiple=True)
    ch.close()
    assert wait_for_message_count(connection.channel(), queue, 0) == 0


def test_nack_multiple_with_requeue_redelivers_all_with_redelivered_flag(channel, unique_name):
    queue = unique_name("q")
    _fill(channel, queue, 3)
    tags = [channel.basic_get(queue, auto_ack=False)[0].delivery_tag for _ in range(3)]
    channel.basic_nack(tags[-1], multiple=True, requeue=True)
    redelivered = [channel.basic_get(queue, auto_ack=True) for _ in range(3)]
    assert [body for _, _, body in redelivered] == [b"m0", b"m1", b"m2"]
    assert all(method.redelivered for method, _, _ in redelivered)


def test_nack_with_requeue_redelivers_to_a_consumer_with_redelivered_flag(channel, unique_name):
    queue = unique_name("q")
    _fill(channel, queue, 1)
    received = []
    channel.basic_consume(queue, _collector(received))
    assert pump(channel.connection, lambda: len(received) == 1)
    channel.basic_nack(received[0][0].delivery_tag, requeue=True)
    assert pump(channel.connection, lambda: len(received) == 2)
    assert [(m.redelivered, b) for m, _, b in received] == [(False, b"m0"), (True, b"m0")]
    channel.basic_ack(received[1][0].delivery_tag)


def test_nack_without_requeue_drops_the_message(channel, unique_name):
    queue = unique_name("q")
    _fill(channel, queue, 2)
    method, _properties, _body = channel.basic_get(queue, auto_ack=False)
    channel.basic_nack(method.delivery_tag, requeue=False)
    assert get_body(channel, queue) == b"m1"
    assert get_body(channel, queue) is None


def test_reject_without_requeue_drops_the_message(channel, unique_name):
    queue = unique_name("q")
    _fill(channel, queue, 1)
    method, _properties, _body = channel.basic_get(queue, auto_ack=False)
    channel.basic_reject(method.delivery_tag, requeue=False)
    assert channel.basic_get(queue) == (None, None, None)


def test_reject_with_requeue_redelivers_with_redelivered_flag(channel, unique_name):
    queue = unique_name("q")
    _fill(channel, queue, 2)
    method, _properties, _body = channel.basic_get(queue, auto_ack=False)
    channel.basic_reject(method.delivery_tag, requeue=True)
    # A requeued message goes back to its original position, ahead of m1.
    method, _properties, body = channel.basic_get(queue, auto_ack=True)
    assert (body, method.redelivered) == (b"m0", True)
    method, _properties, body = channel.basic_get(queue, auto_ack=True)
    assert (body, method.redelivered) == (b"m1", False)


def test_recover_with_requeue_redelivers_unacked_messages(channel, unique_name):
    queue = unique_name("q")
    _fill(channel, queue, 2)
    channel.basic_get(queue, auto_ack=False)
    channel.basic_get(queue, auto_ack=False)
    channel.basic_recover(requeue=True)
    redelivered = [channel.basic_get(queue, auto_ack=True) for _ in range(2)]
    assert [(m.redelivered, b) for m, _, b in redelivered] == [(True, b"m0"), (True, b"m1")]


def test_closing_a_channel_with_unacked_messages_requeues_them_as_redelivered(
    connection, unique_name
):
    queue = unique_name("q")
    ch = connection.channel()
    _fill(ch, queue, 3)
    ch.basic_get(queue, auto_ack=False)
    ch.basic_get(queue, auto_ack=False)
    ch.close()
    other = connection.channel()
    assert wait_for_message_count(other, queue, 3) == 3
    after = [other.basic_get(queue, auto_ack=True) for _ in range(3)]
    assert [(m.redelivered, b) for m, _, b in after] == [(True, b"m0"), (True, b"m1"), (False, b"m2")]


def test_closing_a_connection_with_unacked_messages_requeues_them(
    open_connection, channel, unique_name
):
    queue = unique_name("q")
    _fill(channel, queue, 2)
    consumer_connection = open_connection()
    consumer = consumer_connection.channel()
    assert len(consume(consumer, queue, 2, auto_ack=False)) == 2
    consumer_connection.close()
    assert wait_for_message_count(channel, queue, 2) == 2


def test_ack_of_an_unknown_delivery_tag_closes_the_channel_with_406(channel):
    channel.basic_ack(delivery_tag=999)
    with channel_closed_with(406):
        channel.queue_declare("", exclusive=True)


def test_acking_the_same_delivery_twice_closes_the_channel_with_406(channel, unique_name):
    queue = unique_name("q")
    _fill(channel, queue, 1)
    method, _properties, _body = channel.basic_get(queue, auto_ack=False)
    channel.basic_ack(method.delivery_tag)
    channel.basic_ack(method.delivery_tag)
    with channel_closed_with(406):
        channel.queue_declare("", exclusive=True)


def test_acking_an_auto_acked_delivery_closes_the_channel_with_406(channel, unique_name):
    queue = unique_name("q")
    _fill(channel, queue, 1)
    method, _properties, _body = channel.basic_get(queue, auto_ack=True)
    channel.basic_ack(method.delivery_tag)
    with channel_closed_with(406):
        channel.queue_declare("", exclusive=True)


# ---- mandatory / returns -----------------------------------------------------------------------


def test_mandatory_unroutable_publish_is_returned_with_312_no_route(channel, unique_name):
    exchange = unique_name("direct")
    channel.exchange_declare(exchange, exchange_type="direct")
    returned = []
    channel.add_on_return_callback(lambda ch, method, props, body: returned.append((method, props, body)))
    channel.basic_publish(exchange, "nowhere", b"bounce", mandatory=True,
                          properties=pika.BasicProperties(message_id="m-1"))
    assert pump(channel.connection, lambda: returned)
    method, properties, body = returned[0]
    assert (method.reply_code, method.reply_text) == (312, "NO_ROUTE")
    assert (method.exchange, method.routing_key) == (exchange, "nowhere")
    assert (properties.message_id, body) == ("m-1", b"bounce")


def test_non_mandatory_unroutable_publish_is_dropped_silently(channel, unique_name):
    exchange = unique_name("direct")
    channel.exchange_declare(exchange, exchange_type="direct")
    returned = []
    channel.add_on_return_callback(lambda *args: returned.append(args))
    channel.basic_publish(exchange, "nowhere", b"dropped")
    idle(channel.connection, 0.3)
    assert returned == []
    assert channel.is_open


# ---- message content ---------------------------------------------------------------------------


def test_message_properties_and_nested_headers_round_trip_unchanged(channel, unique_name):
    queue = unique_name("q")
    channel.queue_declare(queue)
    headers = {
        "string": "héllo",
        "int": 42,
        "negative": -7,
        "long": 2 ** 40,
        "true": True,
        "false": False,
        "decimal": Decimal("3.14"),
        "timestamp": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        "void": None,
        "bytes": b"\x00\x01\xff",
        "table": {"inner": {"deep": "value", "n": 1}, "flag": True},
        "array": [1, "two", False, {"three": 3}, [4, [5]], Decimal("0.5")],
        "empty_table": {},
        "empty_array": [],
    }
    sent = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        delivery_mode=2,
        priority=5,
        correlation_id="corr-1",
        reply_to="replies",
        expiration="60000",
        message_id="msg-1",
        timestamp=1700000000,
        type="order.created",
        user_id="guest",
        app_id="interop-tests",
    )
    channel.basic_publish("", queue, b'{"ok": true}', properties=sent)
    [(_method, received, body)] = consume(channel, queue, 1)
    assert body == b'{"ok": true}'
    for field in ["content_type", "content_encoding", "delivery_mode", "priority",
                  "correlation_id", "reply_to", "expiration", "message_id", "timestamp",
                  "type", "user_id", "app_id"]:
        assert getattr(received, field) == getattr(sent, field), field
    assert received.headers == headers


def test_message_without_properties_arrives_without_properties(channel, unique_name):
    queue = unique_name("q")
    channel.queue_declare(queue)
    channel.basic_publish("", queue, b"bare")
    _method, properties, _body = channel.basic_get(queue, auto_ack=True)
    assert properties.headers is None
    assert properties.content_type is None
    assert properties.delivery_mode is None


def test_user_id_that_differs_from_the_authenticated_user_is_refused_with_406(
    channel, unique_name
):
    queue = unique_name("q")
    channel.queue_declare(queue)
    publish(channel, queue, b"forged", user_id="someone-else")
    with channel_closed_with(406):
        channel.queue_declare("", exclusive=True)


def test_an_empty_body_round_trips(channel, unique_name):
    queue = unique_name("q")
    channel.queue_declare(queue)
    publish(channel, queue, b"", content_type="text/plain")
    method, properties, body = channel.basic_get(queue, auto_ack=True)
    assert method is not None
    assert body == b""
    assert properties.content_type == "text/plain"


def test_a_one_mebibyte_body_round_trips_across_many_frames(channel, unique_name):
    queue = unique_name("q")
    channel.queue_declare(queue)
    big = bytes(range(256)) * 4096
    assert len(big) == 1024 * 1024
    publish(channel, queue, big)
    assert get_body(channel, queue) == big
    publish(channel, queue, big)
    [(_method, _properties, body)] = consume(channel, queue, 1)
    assert body == big
