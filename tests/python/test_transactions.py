"""AMQP transactions (tx.select / tx.commit / tx.rollback)."""

from conftest import channel_closed_with, get_body, message_count, publish, wait_for_message_count


def test_rolled_back_publishes_are_not_enqueued(channel, unique_name):
    queue = unique_name("q")
    channel.queue_declare(queue)
    channel.tx_select()
    publish(channel, queue, b"rolled-back")
    publish(channel, queue, b"rolled-back-too")
    assert message_count(channel, queue) == 0  # nothing is enqueued before commit
    channel.tx_rollback()
    assert message_count(channel, queue) == 0


def test_committed_publishes_are_enqueued(channel, open_connection, unique_name):
    queue = unique_name("q")
    channel.queue_declare(queue)
    channel.tx_select()
    publish(channel, queue, b"one")
    publish(channel, queue, b"two")
    channel.tx_commit()
    other = open_connection().channel()
    assert wait_for_message_count(other, queue, 2) == 2
    assert [get_body(other, queue), get_body(other, queue)] == [b"one", b"two"]


def test_a_channel_stays_transactional_after_commit(channel, unique_name):
    queue = unique_name("q")
    channel.queue_declare(queue)
    channel.tx_select()
    publish(channel, queue, b"first")
    channel.tx_commit()
    publish(channel, queue, b"second")
    channel.tx_rollback()
    assert wait_for_message_count(channel, queue, 1) == 1
    assert get_body(channel, queue) == b"first"
    assert get_body(channel, queue) is None


def test_acks_inside_a_transaction_take_effect_only_on_commit(connection, unique_name):
    queue = unique_name("q")
    setup = connection.channel()
    setup.queue_declare(queue)
    publish(setup, queue, b"a")
    publish(setup, queue, b"b")

    tx = connection.channel()
    tx.tx_select()
    first, _props, _body = tx.basic_get(queue, auto_ack=False)
    second, _props, _body = tx.basic_get(queue, auto_ack=False)
    tx.basic_ack(first.delivery_tag)
    tx.tx_commit()
    tx.basic_ack(second.delivery_tag)  # never committed
    tx.close()

    assert wait_for_message_count(setup, queue, 1) == 1
    method, _props, body = setup.basic_get(queue, auto_ack=True)
    assert (body, method.redelivered) == (b"b", True)


def test_rolled_back_ack_leaves_the_message_unacked(connection, unique_name):
    queue = unique_name("q")
    setup = connection.channel()
    setup.queue_declare(queue)
    publish(setup, queue, b"a")

    tx = connection.channel()
    tx.tx_select()
    method, _props, _body = tx.basic_get(queue, auto_ack=False)
    tx.basic_ack(method.delivery_tag)
    tx.tx_rollback()
    assert message_count(setup, queue) == 0  # still unacked, not requeued by the rollback
    tx.close()
    assert wait_for_message_count(setup, queue, 1) == 1


def test_reject_inside_a_transaction_takes_effect_on_commit(connection, unique_name):
    queue = unique_name("q")
    setup = connection.channel()
    setup.queue_declare(queue)
    publish(setup, queue, b"a")

    tx = connection.channel()
    tx.tx_select()
    method, _props, _body = tx.basic_get(queue, auto_ack=False)
    tx.basic_reject(method.delivery_tag, requeue=False)
    tx.tx_commit()
    tx.close()
    assert message_count(setup, queue) == 0


def test_commit_without_select_closes_the_channel_with_406(channel):
    with channel_closed_with(406):
        channel.tx_commit()


def test_rollback_without_select_closes_the_channel_with_406(channel):
    with channel_closed_with(406):
        channel.tx_rollback()
