"""x-single-active-consumer: only one consumer receives at a time; the next one takes over
(with the messages the first left unacked) when it goes."""

from conftest import publish_confirmed


def test_only_the_first_consumer_receives_until_it_cancels(connection, unique_name):
    queue = unique_name("sac")
    first, second = connection.channel(), connection.channel()
    first.queue_declare(queue, arguments={"x-single-active-consumer": True})
    got = {"first": [], "second": []}

    def collect(name):
        def on_message(ch, method, properties, body):
            got[name].append(body)
            ch.basic_ack(method.delivery_tag)

        return on_message

    first_tag = first.basic_consume(queue, collect("first"))
    second.basic_consume(queue, collect("second"))
    publish_confirmed(connection, queue, [b"1", b"2", b"3"])
    connection.process_data_events(time_limit=0.5)
    assert (got["first"], got["second"]) == ([b"1", b"2", b"3"], [])
    first.basic_cancel(first_tag)
    publish_confirmed(connection, queue, [b"4"])
    connection.process_data_events(time_limit=0.5)
    assert got["second"] == [b"4"]


def test_the_next_consumer_gets_what_the_active_one_left_unacked(connection, unique_name):
    queue = unique_name("sac")
    first, second = connection.channel(), connection.channel()
    first.queue_declare(queue, arguments={"x-single-active-consumer": True})
    held, got = [], []
    first.basic_qos(prefetch_count=1)
    first.basic_consume(queue, lambda ch, method, props, body: held.append(body))
    second.basic_consume(
        queue, lambda ch, method, props, body: (got.append(body), ch.basic_ack(method.delivery_tag))
    )
    publish_confirmed(connection, queue, [b"a", b"b"])
    connection.process_data_events(time_limit=0.5)
    assert (held, got) == ([b"a"], [])
    first.close()
    for _ in range(50):
        if len(got) == 2:
            break
        connection.process_data_events(time_limit=0.1)
    assert got == [b"a", b"b"]
