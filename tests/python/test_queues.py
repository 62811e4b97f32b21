"""Queue declare / bind / purge / delete semantics and reply codes."""

from conftest import channel_closed_with, get_body, idle, publish, publish_confirmed


def test_declaring_a_queue_with_an_empty_name_gets_a_server_generated_name(channel):
    name = channel.queue_declare("", exclusive=True).method.queue
    assert name.startswith("amq.gen-")
    assert channel.queue_declare(name, passive=True).method.queue == name


def test_passive_declare_of_a_missing_queue_closes_the_channel_with_404(channel, unique_name):
    with channel_closed_with(404):
        channel.queue_declare(unique_name("missing"), passive=True)


def test_redeclaring_a_queue_with_different_durability_closes_the_channel_with_406(
    connection, unique_name
):
    queue = unique_name("q")
    connection.channel().queue_declare(queue, durable=False)
    with channel_closed_with(406):
        connection.channel().queue_declare(queue, durable=True)


def test_redeclaring_a_queue_with_different_arguments_closes_the_channel_with_406(
    connection, unique_name
):
    queue = unique_name("q")
    connection.channel().queue_declare(queue, arguments={"x-message-ttl": 60000})
    with channel_closed_with(406):
        connection.channel().queue_declare(queue, arguments={"x-message-ttl": 1000})


def test_redeclaring_a_queue_with_identical_settings_succeeds(channel, unique_name):
    queue = unique_name("q")
    channel.queue_declare(queue, durable=True, arguments={"x-max-length": 10})
    channel.queue_declare(queue, durable=True, arguments={"x-max-length": 10})


def test_declaring_a_queue_named_amq_dot_something_is_refused_with_403(channel, unique_name):
    with channel_closed_with(403):
        channel.queue_declare("amq." + unique_name("custom"))


def test_declare_ok_reports_the_consumer_count(channel, unique_name):
    queue = unique_name("q")
    declared = channel.queue_declare(queue).method
    assert (declared.message_count, declared.consumer_count) == (0, 0)
    channel.basic_consume(queue, lambda *args: None)
    tag = channel.basic_consume(queue, lambda *args: None)
    declared = channel.queue_declare(queue, passive=True).method
    assert (declared.message_count, declared.consumer_count) == (0, 2)
    channel.basic_cancel(tag)
    assert channel.queue_declare(queue, passive=True).method.consumer_count == 1


def test_declare_ok_message_count_counts_ready_messages(channel, unique_name):
    queue = unique_name("q")
    channel.queue_declare(queue)
    publish_confirmed(channel.connection, queue, [b"0", b"1", b"2"])
    declared = channel.queue_declare(queue, passive=True).method
    assert (declared.message_count, declared.consumer_count) == (3, 0)
    channel.basic_get(queue, auto_ack=False)  # unacked, no longer ready
    assert channel.queue_declare(queue, passive=True).method.message_count == 2


def test_exclusive_queue_is_locked_against_other_connections_with_405(
    channel, open_connection, unique_name
):
    queue = unique_name("exclusive")
    channel.queue_declare(queue, exclusive=True)
    other = open_connection().channel()
    with channel_closed_with(405):
        other.basic_consume(queue, lambda *args: None)


def test_exclusive_queue_passive_declare_from_another_connection_is_locked_with_405(
    channel, open_connection, unique_name
):
    queue = unique_name("exclusive")
    channel.queue_declare(queue, exclusive=True)
    other = open_connection().channel()
    with channel_closed_with(405):
        other.queue_declare(queue, passive=True)


def test_exclusive_queue_is_usable_from_another_channel_of_the_same_connection(
    connection, unique_name
):
    queue = unique_name("exclusive")
    connection.channel().queue_declare(queue, exclusive=True)
    other = connection.channel()
    publish(other, queue, b"same-connection")
    assert get_body(other, queue) == b"same-connection"


def test_exclusive_queue_is_deleted_when_its_connection_closes(
    open_connection, channel, unique_name
):
    queue = unique_name("exclusive")
    owner = open_connection()
    owner.channel().queue_declare(queue, exclusive=True)
    owner.close()
    with channel_closed_with(404):
        for _ in range(50):  # the deletion may trail the close-ok slightly
            channel.queue_declare(queue, passive=True)
            idle(channel.connection, 0.1)


def test_auto_delete_queue_is_deleted_after_its_last_consumer_cancels(connection, unique_name):
    queue = unique_name("autodelete")
    ch = connection.channel()
    ch.queue_declare(queue, auto_delete=True)
    first = ch.basic_consume(queue, lambda *args: None)
    second = ch.basic_consume(queue, lambda *args: None)
    ch.basic_cancel(first)
    ch.queue_declare(queue, passive=True)  # one consumer left: still there
    ch.basic_cancel(second)
    with channel_closed_with(404):
        for _ in range(50):
            ch.queue_declare(queue, passive=True)
            idle(connection, 0.1)


def test_auto_delete_queue_that_never_had_a_consumer_is_kept(channel, unique_name):
    queue = unique_name("autodelete")
    channel.queue_declare(queue, auto_delete=True)
    idle(channel.connection, 0.3)
    channel.queue_declare(queue, passive=True)


def test_purge_removes_ready_messages_and_returns_their_count(channel, unique_name):
    queue = unique_name("q")
    channel.queue_declare(queue)
    publish_confirmed(channel.connection, queue, [str(i).encode() for i in range(5)])
    assert channel.queue_purge(queue).method.message_count == 5
    assert channel.queue_declare(queue, passive=True).method.message_count == 0
    assert channel.queue_purge(queue).method.message_count == 0


def test_purge_keeps_unacked_messages(channel, unique_name):
    queue = unique_name("q")
    channel.queue_declare(queue)
    publish_confirmed(channel.connection, queue, [b"unacked", b"ready"])
    method, _props, _body = channel.basic_get(queue, auto_ack=False)
    assert channel.queue_purge(queue).method.message_count == 1
    channel.basic_reject(method.delivery_tag, requeue=True)
    assert get_body(channel, queue) == b"unacked"


def test_purge_of_a_missing_queue_closes_the_channel_with_404(channel, unique_name):
    with channel_closed_with(404):
        channel.queue_purge(unique_name("missing"))


def test_delete_if_empty_on_a_non_empty_queue_closes_the_channel_with_406(connection, unique_name):
    queue = unique_name("q")
    ch = connection.channel()
    ch.queue_declare(queue)
    publish_confirmed(connection, queue, [b"keep-me"])
    with channel_closed_with(406):
        ch.queue_delete(queue, if_empty=True)
    assert connection.channel().queue_declare(queue, passive=True).method.message_count == 1


def test_delete_if_unused_on_a_queue_with_a_consumer_closes_the_channel_with_406(
    connection, unique_name
):
    queue = unique_name("q")
    consumer = connection.channel()
    consumer.queue_declare(queue)
    consumer.basic_consume(queue, lambda *args: None)
    with channel_closed_with(406):
        connection.channel().queue_delete(queue, if_unused=True)
    assert connection.channel().queue_declare(queue, passive=True).method.consumer_count == 1


def test_delete_if_empty_and_if_unused_succeed_on_an_idle_empty_queue(channel, unique_name):
    queue = unique_name("q")
    channel.queue_declare(queue)
    assert channel.queue_delete(queue, if_empty=True, if_unused=True).method.message_count == 0


def test_delete_returns_the_number_of_messages_deleted(channel, unique_name):
    queue = unique_name("q")
    channel.queue_declare(queue)
    publish_confirmed(channel.connection, queue, [str(i).encode() for i in range(4)])
    assert channel.queue_delete(queue).method.message_count == 4
    with channel_closed_with(404):
        channel.queue_declare(queue, passive=True)


def test_deleting_a_missing_queue_succeeds_with_zero_messages(channel, unique_name):
    # RabbitMQ 3.x made queue.delete idempotent (no 404).
    assert channel.queue_delete(unique_name("missing")).method.message_count == 0


def test_bind_and_unbind_control_which_messages_reach_the_queue(channel, unique_name):
    exchange, queue = unique_name("direct"), unique_name("q")
    channel.exchange_declare(exchange, exchange_type="direct")
    channel.queue_declare(queue)
    channel.queue_bind(queue, exchange, routing_key="k")
    publish(channel, "k", b"bound", exchange=exchange)
    channel.queue_unbind(queue, exchange, routing_key="k")
    publish(channel, "k", b"unbound", exchange=exchange)
    assert get_body(channel, queue) == b"bound"
    assert get_body(channel, queue) is None


def test_unbinding_a_binding_that_does_not_exist_succeeds(channel, unique_name):
    exchange, queue = unique_name("direct"), unique_name("q")
    channel.exchange_declare(exchange, exchange_type="direct")
    channel.queue_declare(queue)
    channel.queue_unbind(queue, exchange, routing_key="never-bound")
    assert channel.is_open


def test_binding_to_a_missing_exchange_closes_the_channel_with_404(channel, unique_name):
    queue = unique_name("q")
    channel.queue_declare(queue)
    with channel_closed_with(404):
        channel.queue_bind(queue, unique_name("missing"), routing_key="k")


def test_binding_a_missing_queue_closes_the_channel_with_404(channel, unique_name):
    exchange = unique_name("direct")
    channel.exchange_declare(exchange, exchange_type="direct")
    with channel_closed_with(404):
        channel.queue_bind(unique_name("missing"), exchange, routing_key="k")
