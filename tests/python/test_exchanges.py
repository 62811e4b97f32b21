"""Exchange declare / delete / bind semantics and reply codes."""

import pika
import pytest

from conftest import channel_closed_with, consume, get_body, publish


def test_declaring_an_exchange_of_each_type_succeeds_and_is_idempotent(channel, unique_name):
    for exchange_type in ["direct", "fanout", "topic", "headers"]:
        name = unique_name(exchange_type)
        channel.exchange_declare(name, exchange_type=exchange_type)
        channel.exchange_declare(name, exchange_type=exchange_type)
        channel.exchange_declare(name, passive=True)


def test_declaring_an_exchange_of_an_unknown_type_closes_the_connection_with_503(
    connection, unique_name
):
    # RabbitMQ treats an unknown exchange type as a connection error (503 COMMAND_INVALID).
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        connection.channel().exchange_declare(unique_name("odd"), exchange_type="no-such-type")
    assert info.value.reply_code == 503


def test_passive_declare_of_a_missing_exchange_closes_the_channel_with_404(channel, unique_name):
    with channel_closed_with(404):
        channel.exchange_declare(unique_name("missing"), passive=True)


def test_redeclaring_an_exchange_with_a_different_type_closes_the_channel_with_406(
    connection, unique_name
):
    name = unique_name("ex")
    connection.channel().exchange_declare(name, exchange_type="direct")
    with channel_closed_with(406):
        connection.channel().exchange_declare(name, exchange_type="fanout")


def test_redeclaring_an_exchange_with_different_durability_closes_the_channel_with_406(
    connection, unique_name
):
    name = unique_name("ex")
    connection.channel().exchange_declare(name, exchange_type="direct", durable=False)
    with channel_closed_with(406):
        connection.channel().exchange_declare(name, exchange_type="direct", durable=True)


PREDECLARED = {"amq.direct": "direct", "amq.fanout": "fanout", "amq.topic": "topic",
               "amq.headers": "headers", "amq.match": "headers"}


def test_predeclared_amq_exchanges_exist(channel):
    for name in PREDECLARED:
        channel.exchange_declare(name, passive=True)


def test_predeclared_amq_exchanges_can_be_redeclared_with_their_own_type(channel):
    for name, exchange_type in PREDECLARED.items():
        channel.exchange_declare(name, exchange_type=exchange_type, durable=True)


def test_declaring_an_exchange_named_amq_dot_something_is_refused_with_403(channel, unique_name):
    with channel_closed_with(403):
        channel.exchange_declare("amq." + unique_name("custom"), exchange_type="direct")


def test_deleting_an_exchange_removes_it(connection, unique_name):
    name = unique_name("ex")
    ch = connection.channel()
    ch.exchange_declare(name, exchange_type="fanout")
    ch.exchange_delete(name)
    with channel_closed_with(404):
        ch.exchange_declare(name, passive=True)


def test_deleting_a_missing_exchange_succeeds(channel, unique_name):
    # RabbitMQ 3.x made exchange.delete idempotent (no 404).
    channel.exchange_delete(unique_name("never-declared"))
    assert channel.is_open


def test_deleting_a_bound_exchange_if_unused_closes_the_channel_with_406(connection, unique_name):
    name, queue = unique_name("ex"), unique_name("q")
    ch = connection.channel()
    ch.exchange_declare(name, exchange_type="fanout")
    ch.queue_declare(queue)
    ch.queue_bind(queue, name)
    with channel_closed_with(406):
        ch.exchange_delete(name, if_unused=True)
    connection.channel().exchange_declare(name, passive=True)


def test_deleting_an_unbound_exchange_if_unused_succeeds(connection, unique_name):
    name = unique_name("ex")
    ch = connection.channel()
    ch.exchange_declare(name, exchange_type="fanout")
    ch.exchange_delete(name, if_unused=True)
    with channel_closed_with(404):
        ch.exchange_declare(name, passive=True)


def test_deleting_an_exchange_removes_its_bindings(channel, unique_name):
    name, queue = unique_name("ex"), unique_name("q")
    channel.exchange_declare(name, exchange_type="fanout")
    channel.queue_declare(queue)
    channel.queue_bind(queue, name)
    channel.exchange_delete(name)
    channel.exchange_declare(name, exchange_type="fanout")
    publish(channel, "", b"after-redeclare", exchange=name)
    assert channel.queue_declare(queue, passive=True).method.message_count == 0


def test_exchange_to_exchange_binding_routes_messages(channel, unique_name):
    source, destination, queue = unique_name("src"), unique_name("dst"), unique_name("q")
    channel.exchange_declare(source, exchange_type="topic")
    channel.exchange_declare(destination, exchange_type="direct")
    channel.exchange_bind(destination=destination, source=source, routing_key="orders.*")
    channel.queue_declare(queue)
    channel.queue_bind(queue, destination, routing_key="orders.created")

    publish(channel, "orders.created", b"routed", exchange=source)
    publish(channel, "orders.deleted", b"dropped-by-destination", exchange=source)
    publish(channel, "payments.created", b"dropped-by-source-binding", exchange=source)

    assert [body for _, _, body in consume(channel, queue, 3, timeout=1)] == [b"routed"]


def test_exchange_unbind_stops_routing_through_the_exchange(channel, unique_name):
    source, destination, queue = unique_name("src"), unique_name("dst"), unique_name("q")
    channel.exchange_declare(source, exchange_type="fanout")
    channel.exchange_declare(destination, exchange_type="fanout")
    channel.exchange_bind(destination=destination, source=source)
    channel.queue_declare(queue)
    channel.queue_bind(queue, destination)
    publish(channel, "", b"before", exchange=source)
    channel.exchange_unbind(destination=destination, source=source)
    publish(channel, "", b"after", exchange=source)
    assert get_body(channel, queue) == b"before"
    assert get_body(channel, queue) is None


def test_exchange_to_exchange_bindings_in_a_cycle_deliver_each_message_once(channel, unique_name):
    a, b, queue = unique_name("a"), unique_name("b"), unique_name("q")
    channel.exchange_declare(a, exchange_type="fanout")
    channel.exchange_declare(b, exchange_type="fanout")
    channel.exchange_bind(destination=b, source=a)
    channel.exchange_bind(destination=a, source=b)
    channel.queue_declare(queue)
    channel.queue_bind(queue, a)
    channel.queue_bind(queue, b)
    publish(channel, "", b"once", exchange=a)
    assert get_body(channel, queue) == b"once"
    assert get_body(channel, queue) is None


def test_alternate_exchange_receives_unroutable_messages(channel, unique_name):
    main, alternate = unique_name("main"), unique_name("alt")
    routed, unrouted = unique_name("routed"), unique_name("unrouted")
    channel.exchange_declare(alternate, exchange_type="fanout")
    channel.exchange_declare(main, exchange_type="direct",
                             arguments={"alternate-exchange": alternate})
    channel.queue_declare(routed)
    channel.queue_declare(unrouted)
    channel.queue_bind(routed, main, routing_key="known")
    channel.queue_bind(unrouted, alternate)

    publish(channel, "known", b"to-routed", exchange=main)
    publish(channel, "unknown", b"to-alternate", exchange=main)

    assert get_body(channel, routed) == b"to-routed"
    assert get_body(channel, routed) is None
    method, _properties, body = channel.basic_get(unrouted, auto_ack=True)
    assert body == b"to-alternate"
    assert method.exchange == main  # the original exchange and key are kept
    assert method.routing_key == "unknown"


def test_mandatory_message_delivered_via_alternate_exchange_is_not_returned(channel, unique_name):
    main, alternate, queue = unique_name("main"), unique_name("alt"), unique_name("q")
    channel.exchange_declare(alternate, exchange_type="fanout")
    channel.exchange_declare(main, exchange_type="direct",
                             arguments={"alternate-exchange": alternate})
    channel.queue_declare(queue)
    channel.queue_bind(queue, alternate)
    channel.confirm_delivery()
    channel.basic_publish(main, "nowhere", b"saved", mandatory=True)  # no UnroutableError
    assert get_body(channel, queue) == b"saved"


def test_publishing_directly_to_an_internal_exchange_closes_the_channel_with_403(
    connection, unique_name
):
    name = unique_name("internal")
    setup = connection.channel()
    setup.exchange_declare(name, exchange_type="fanout", internal=True)
    ch = connection.channel()
    ch.basic_publish(name, "", b"forbidden")
    with channel_closed_with(403):
        ch.queue_declare("", exclusive=True)  # any synchronous call observes the close


def test_internal_exchange_receives_messages_through_an_exchange_binding(channel, unique_name):
    front, internal, queue = unique_name("front"), unique_name("internal"), unique_name("q")
    channel.exchange_declare(front, exchange_type="fanout")
    channel.exchange_declare(internal, exchange_type="fanout", internal=True)
    channel.exchange_bind(destination=internal, source=front)
    channel.queue_declare(queue)
    channel.queue_bind(queue, internal)
    publish(channel, "", b"via-front", exchange=front)
    assert get_body(channel, queue) == b"via-front"


def test_auto_delete_exchange_is_deleted_when_its_last_binding_is_removed(connection, unique_name):
    name, queue = unique_name("autodel"), unique_name("q")
    ch = connection.channel()
    ch.exchange_declare(name, exchange_type="fanout", auto_delete=True)
    ch.queue_declare(queue)
    ch.queue_bind(queue, name)
    ch.exchange_declare(name, passive=True)
    ch.queue_unbind(queue, name)
    with channel_closed_with(404):
        ch.exchange_declare(name, passive=True)


def test_publishing_to_a_missing_exchange_closes_the_channel_with_404(channel, unique_name):
    channel.basic_publish(unique_name("missing"), "key", b"lost")
    with channel_closed_with(404):
        channel.queue_declare("", exclusive=True)


def test_default_exchange_cannot_be_bound_to(channel, unique_name):
    queue = unique_name("q")
    channel.queue_declare(queue)
    with channel_closed_with(403):
        channel.queue_bind(queue, "", routing_key="anything")
