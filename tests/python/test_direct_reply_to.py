"""Direct reply-to: RPC replies over the pseudo-queue amq.rabbitmq.reply-to."""

import pika

from conftest import channel_closed_with, pump

REPLY_TO = "amq.rabbitmq.reply-to"


def _serve_one_request(server_channel, queue):
    """A server on another connection: answer one request to whatever reply_to it names."""
    method, properties, body = None, None, None
    for _ in range(100):
        method, properties, body = server_channel.basic_get(queue, auto_ack=True)
        if method is not None:
            break
        server_channel.connection.process_data_events(time_limit=0.05)
    assert method is not None, "the request never arrived"
    server_channel.basic_publish(
        "", properties.reply_to, b"reply to " + body,
        properties=pika.BasicProperties(correlation_id=properties.correlation_id),
    )
    return properties


def test_rpc_reply_arrives_over_direct_reply_to(channel, open_connection, unique_name):
    requests = unique_name("rpc")
    channel.queue_declare(requests)
    replies = []
    channel.basic_consume(REPLY_TO, lambda ch, m, p, b: replies.append((m, p, b)), auto_ack=True)
    channel.basic_publish("", requests, b"ping", properties=pika.BasicProperties(
        reply_to=REPLY_TO, correlation_id="call-1"))

    request_properties = _serve_one_request(open_connection().channel(), requests)

    # The broker rewrites reply_to into a per-channel routable name.
    assert request_properties.reply_to.startswith(REPLY_TO + ".")
    assert pump(channel.connection, lambda: replies)
    method, properties, body = replies[0]
    assert body == b"reply to ping"
    assert properties.correlation_id == "call-1"
    assert method.routing_key == request_properties.reply_to


def test_several_rpc_calls_share_one_reply_consumer(channel, open_connection, unique_name):
    requests = unique_name("rpc")
    channel.queue_declare(requests)
    replies = {}
    channel.basic_consume(
        REPLY_TO, lambda ch, m, p, b: replies.__setitem__(p.correlation_id, b), auto_ack=True)
    server = open_connection().channel()
    for i in range(3):
        channel.basic_publish("", requests, f"q{i}".encode(), properties=pika.BasicProperties(
            reply_to=REPLY_TO, correlation_id=f"call-{i}"))
        _serve_one_request(server, requests)
    assert pump(channel.connection, lambda: len(replies) == 3)
    assert replies == {f"call-{i}": f"reply to q{i}".encode() for i in range(3)}


def test_publishing_with_direct_reply_to_before_consuming_it_closes_the_channel_with_406(
    channel, unique_name
):
    requests = unique_name("rpc")
    channel.queue_declare(requests)
    channel.basic_publish("", requests, b"ping",
                          properties=pika.BasicProperties(reply_to=REPLY_TO))
    with channel_closed_with(406):
        channel.queue_declare("", exclusive=True)


def test_consuming_direct_reply_to_with_manual_ack_closes_the_channel_with_406(channel):
    with channel_closed_with(406):
        channel.basic_consume(REPLY_TO, lambda *args: None, auto_ack=False)
