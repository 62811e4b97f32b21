"""Publisher confirms (confirm.select) as seen through pika's BlockingChannel."""

import pika
import pika.exceptions
import pytest

from conftest import channel_closed_with, message_count


def test_every_publish_in_confirm_mode_is_confirmed(channel, unique_name):
    queue = unique_name("q")
    channel.queue_declare(queue, durable=True)
    channel.confirm_delivery()
    for i in range(200):
        # BlockingChannel waits for the ack of each publish and raises NackError on a nack.
        channel.basic_publish("", queue, f"m{i}".encode(),
                              properties=pika.BasicProperties(delivery_mode=2))
    assert message_count(channel, queue) == 200


def test_confirmed_messages_are_visible_to_other_connections(channel, open_connection, unique_name):
    queue = unique_name("q")
    channel.queue_declare(queue)
    channel.confirm_delivery()
    for i in range(20):
        channel.basic_publish("", queue, f"m{i}".encode())
    assert message_count(open_connection().channel(), queue) == 20


def test_unroutable_publish_in_confirm_mode_is_still_confirmed(channel, unique_name):
    exchange = unique_name("direct")
    channel.exchange_declare(exchange, exchange_type="direct")
    channel.confirm_delivery()
    channel.basic_publish(exchange, "nowhere", b"dropped")  # acked although routed nowhere
    assert channel.is_open


def test_mandatory_unroutable_publish_in_confirm_mode_raises_unroutable_error(channel, unique_name):
    exchange = unique_name("direct")
    channel.exchange_declare(exchange, exchange_type="direct")
    channel.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError) as info:
        channel.basic_publish(exchange, "nowhere", b"bounce", mandatory=True)
    [returned] = info.value.messages
    assert returned.method.reply_code == 312
    assert returned.body == b"bounce"
    channel.basic_publish("", "", b"still usable")  # the channel stays open


def test_publishing_to_a_missing_exchange_in_confirm_mode_closes_the_channel_with_404(
    channel, unique_name
):
    channel.confirm_delivery()
    with channel_closed_with(404):
        channel.basic_publish(unique_name("missing"), "key", b"lost")


def test_selecting_confirms_on_a_transactional_channel_closes_it_with_406(channel):
    channel.tx_select()
    with channel_closed_with(406):
        channel.confirm_delivery()


def test_selecting_a_transaction_on_a_confirm_channel_closes_it_with_406(channel):
    channel.confirm_delivery()
    with channel_closed_with(406):
        channel.tx_select()
