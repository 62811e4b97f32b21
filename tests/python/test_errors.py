"""Errors stay where they happen: a channel error closes one channel, a connection error one connection."""

import socket
import time
import urllib.parse

import pika
import pika.exceptions
import pytest

from conftest import channel_closed_with, get_body, publish


def _round_trip(ch, queue, body):
    publish(ch, queue, body)
    return get_body(ch, queue)


def test_a_channel_error_leaves_other_channels_of_the_connection_working(connection, unique_name):
    queue = unique_name("q")
    healthy = connection.channel()
    healthy.queue_declare(queue)
    broken = connection.channel()
    with channel_closed_with(404):
        broken.queue_declare(unique_name("missing"), passive=True)
    assert broken.is_closed
    assert connection.is_open
    assert healthy.is_open
    assert _round_trip(healthy, queue, b"still-works") == b"still-works"
    assert _round_trip(connection.channel(), queue, b"new-channel") == b"new-channel"


def test_a_channel_error_leaves_other_connections_working(connection, open_connection, unique_name):
    queue = unique_name("q")
    other = open_connection().channel()
    other.queue_declare(queue)
    with channel_closed_with(406):
        connection.channel().tx_commit()
    assert _round_trip(other, queue, b"unaffected") == b"unaffected"


def test_a_channel_error_does_not_lose_the_consumers_of_other_channels(connection, unique_name):
    queue = unique_name("q")
    consumer = connection.channel()
    consumer.queue_declare(queue)
    received = []
    consumer.basic_consume(queue, lambda ch, m, p, b: received.append(b), auto_ack=True)
    with channel_closed_with(404):
        connection.channel().basic_get(unique_name("missing"))
    publish(connection.channel(), queue, b"delivered")
    deadline = time.monotonic() + 5
    while not received and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.05)
    assert received == [b"delivered"]


def test_a_connection_error_leaves_other_connections_working(amqp_url, open_connection, unique_name):
    queue = unique_name("q")
    survivor = open_connection().channel()
    survivor.queue_declare(queue)
    doomed = open_connection(channel_max=1)
    doomed.channel()
    # Exceeding channel_max is a connection error (its reply code is checked in test_connection).
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
        doomed.channel(channel_number=2)
    assert doomed.is_closed
    assert _round_trip(survivor, queue, b"unaffected") == b"unaffected"


def test_a_client_sending_garbage_leaves_other_connections_working(
    amqp_url, open_connection, unique_name
):
    queue = unique_name("q")
    survivor = open_connection().channel()
    survivor.queue_declare(queue)
    url = urllib.parse.urlparse(amqp_url)
    with socket.create_connection((url.hostname, url.port or 5672), timeout=5) as sock:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        sock.sendall(b"\xde\xad\xbe\xef" * 64)  # not a frame
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the broker hangs up on us
            try:
                if not sock.recv(4096):
                    break
            except (ConnectionResetError, socket.timeout):
                break
    assert _round_trip(survivor, queue, b"unaffected") == b"unaffected"


def test_a_client_that_disconnects_mid_handshake_leaves_the_broker_working(
    amqp_url, open_connection, unique_name
):
    url = urllib.parse.urlparse(amqp_url)
    for _ in range(5):
        with socket.create_connection((url.hostname, url.port or 5672), timeout=5) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
    queue = unique_name("q")
    ch = open_connection().channel()
    ch.queue_declare(queue)
    assert _round_trip(ch, queue, b"fine") == b"fine"
