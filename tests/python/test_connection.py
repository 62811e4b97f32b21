"""Connection handshake, authentication, vhosts, capabilities, heartbeats and channel_max."""

import socket
import time
import urllib.parse

import pika
import pika.exceptions
import pytest

from conftest import connect, idle, unique_name


def _host_port(url):
    parsed = urllib.parse.urlparse(url)
    return parsed.hostname, parsed.port or 5672


def test_handshake_with_guest_credentials_opens_a_usable_connection(amqp_url):
    conn = connect(amqp_url, credentials=pika.PlainCredentials("guest", "guest"))
    try:
        assert conn.is_open
        ch = conn.channel()
        assert ch.queue_declare("", exclusive=True).method.queue
    finally:
        conn.close()
    assert conn.is_closed


def test_wrong_password_is_rejected_as_an_authentication_failure(amqp_url):
    with pytest.raises((pika.exceptions.ProbableAuthenticationError,
                        pika.exceptions.AuthenticationError)):
        connect(amqp_url, credentials=pika.PlainCredentials("guest", "not-the-password"))


CAPABILITIES = [
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "connection.blocked",
    "authentication_failure_close",
    "per_consumer_qos",
    "direct_reply_to",
]


def test_server_properties_advertise_the_rabbitmq_capabilities_clients_rely_on(connection):
    capabilities = connection._impl.server_properties["capabilities"]
    assert {name: capabilities.get(name) for name in CAPABILITIES} == {
        name: True for name in CAPABILITIES}


def test_server_properties_name_the_product_and_version(connection):
    properties = connection._impl.server_properties
    assert properties.get("product")
    assert properties.get("version")


def test_opening_a_nonexistent_vhost_is_refused_with_530(amqp_url):
    # The broker answers connection.open with connection.close 530; pika reports a close during
    # the handshake as ProbableAccessDeniedError wrapping the ConnectionClosedByBroker.
    with pytest.raises((pika.exceptions.ConnectionClosedByBroker,
                        pika.exceptions.ProbableAccessDeniedError)) as info:
        connect(amqp_url, virtual_host=unique_name("no-such-vhost"))
    if isinstance(info.value, pika.exceptions.ConnectionClosedByBroker):
        assert info.value.reply_code == 530
    else:
        assert "ConnectionClosedByBroker: (530)" in str(info.value)


def test_heartbeat_interval_requested_by_the_client_is_negotiated(amqp_url):
    conn = connect(amqp_url, heartbeat=2)
    try:
        assert conn._impl.params.heartbeat == 2
    finally:
        conn.close()


def test_connection_with_two_second_heartbeat_survives_five_idle_seconds(amqp_url):
    conn = connect(amqp_url, heartbeat=2)
    try:
        idle(conn, 5.0)
        assert conn.is_open
        ch = conn.channel()
        assert ch.queue_declare("", exclusive=True).method.queue
    finally:
        conn.close()


def test_channel_max_requested_by_the_client_is_negotiated_and_usable(amqp_url):
    conn = connect(amqp_url, channel_max=4)
    try:
        assert conn._impl.params.channel_max == 4
        channels = [conn.channel() for _ in range(4)]
        assert sorted(ch.channel_number for ch in channels) == [1, 2, 3, 4]
        with pytest.raises(pika.exceptions.NoFreeChannels):
            conn.channel()
        for ch in channels:
            ch.queue_declare("", exclusive=True)
    finally:
        conn.close()


def test_opening_more_channels_than_negotiated_channel_max_closes_the_connection_with_530(amqp_url):
    conn = connect(amqp_url, channel_max=4)
    try:
        for _ in range(4):
            conn.channel()
        # pika only checks channel_max when it picks the number itself. RabbitMQ 3.10 limits the
        # number of open channels (a lone channel numbered above channel_max is accepted).
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
            conn.channel(channel_number=5)
        assert info.value.reply_code == 530
    finally:
        if conn.is_open:
            conn.close()


def test_closing_a_channel_and_reopening_the_same_number_works(connection):
    ch = connection.channel(channel_number=7)
    ch.close()
    again = connection.channel(channel_number=7)
    assert again.queue_declare("", exclusive=True).method.queue


def test_unsupported_protocol_header_is_answered_with_amqp_0_9_1_header(amqp_url):
    host, port = _host_port(amqp_url)
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"AMQP\x00\x00\x08\x00")  # AMQP 0-8
        reply = b""
        deadline = time.monotonic() + 5
        while len(reply) < 8 and time.monotonic() < deadline:
            chunk = sock.recv(8 - len(reply))
            if not chunk:
                break
            reply += chunk
    assert reply == b"AMQP\x00\x00\x09\x01"
