"""Routing through direct, fanout, topic and headers exchanges."""

from conftest import get_body, publish


def _bodies(channel, queue):
    bodies = []
    for _ in range(100):
        body = get_body(channel, queue)
        if body is None:
            return bodies
        bodies.append(body)
    return bodies


def test_default_exchange_routes_to_the_queue_named_by_the_routing_key(channel, unique_name):
    queue = unique_name("q")
    channel.queue_declare(queue)
    publish(channel, queue, b"hello")
    assert _bodies(channel, queue) == [b"hello"]


def test_direct_exchange_routes_by_exact_routing_key(channel, unique_name):
    exchange, red, blue = unique_name("direct"), unique_name("red"), unique_name("blue")
    channel.exchange_declare(exchange, exchange_type="direct")
    channel.queue_declare(red)
    channel.queue_declare(blue)
    channel.queue_bind(red, exchange, routing_key="red")
    channel.queue_bind(blue, exchange, routing_key="blue")
    channel.queue_bind(blue, exchange, routing_key="navy")

    for key in ["red", "blue", "navy", "Red", "green", "red.dark"]:
        publish(channel, key, key.encode(), exchange=exchange)

    assert _bodies(channel, red) == [b"red"]
    assert _bodies(channel, blue) == [b"blue", b"navy"]


def test_direct_exchange_delivers_one_copy_per_queue_with_several_matching_bindings(
    channel, unique_name
):
    exchange, queue = unique_name("direct"), unique_name("q")
    channel.exchange_declare(exchange, exchange_type="direct")
    channel.queue_declare(queue)
    channel.queue_bind(queue, exchange, routing_key="k")
    channel.queue_bind(queue, exchange, routing_key="k")  # duplicate binding is a no-op
    publish(channel, "k", b"once", exchange=exchange)
    assert _bodies(channel, queue) == [b"once"]


def test_fanout_exchange_delivers_a_copy_to_every_bound_queue_ignoring_the_key(channel, unique_name):
    exchange = unique_name("fanout")
    queues = [unique_name(f"q{i}") for i in range(3)]
    channel.exchange_declare(exchange, exchange_type="fanout")
    for i, queue in enumerate(queues):
        channel.queue_declare(queue)
        channel.queue_bind(queue, exchange, routing_key=f"ignored-{i}")
    publish(channel, "whatever", b"broadcast", exchange=exchange)
    for queue in queues:
        assert _bodies(channel, queue) == [b"broadcast"]


# (binding pattern, routing key, routed?)
TOPIC_CASES = [
    ("#", "", True),
    ("#", "a.b.c", True),
    ("a.#", "a", True),
    ("a.#", "a.b.c", True),
    ("a.#", "b.a", False),
    ("#.c", "c", True),
    ("#.c", "a.b.c", True),
    ("a.#.c", "a.c", True),
    ("a.#.c", "a.b.b.c", True),
    ("*.b", "b", False),
    ("*.b", "a.b", True),
    ("*.b", "x.a.b", False),
    ("*", "", False),  # RabbitMQ: an empty key has no words at all
    ("*", "a.b", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.c", False),
    ("a.*.c", "a.b.b.c", False),
    ("a.b", "a.b", True),
    ("a.b", "a.bb", False),
    ("*.*", "a.", True),  # an empty last word is still a word
    ("#.#", "a.b", True),
    ("a.*.#", "a", False),
    ("a.*.#", "a.b.c.d", True),
]


def test_topic_binding_patterns_match_routing_keys_word_by_word(channel, unique_name):
    queues = []
    for pattern, key, _routed in TOPIC_CASES:
        queue = unique_name("q")
        channel.queue_declare(queue)
        # A private exchange per case so each key meets exactly one pattern.
        case_exchange = unique_name("topic-case")
        channel.exchange_declare(case_exchange, exchange_type="topic")
        channel.queue_bind(queue, case_exchange, routing_key=pattern)
        publish(channel, key, b"m", exchange=case_exchange)
        queues.append(queue)
    mismatches = [
        f"pattern {pattern!r} vs key {key!r}: expected {'routed' if routed else 'not routed'}"
        for (pattern, key, routed), queue in zip(TOPIC_CASES, queues)
        if (_bodies(channel, queue) == [b"m"]) != routed
    ]
    assert mismatches == []


def test_topic_queue_with_several_matching_patterns_gets_one_copy(channel, unique_name):
    exchange, queue = unique_name("topic"), unique_name("q")
    channel.exchange_declare(exchange, exchange_type="topic")
    channel.queue_declare(queue)
    for pattern in ["orders.*", "#", "*.created", "orders.created"]:
        channel.queue_bind(queue, exchange, routing_key=pattern)
    publish(channel, "orders.created", b"once", exchange=exchange)
    assert _bodies(channel, queue) == [b"once"]


def _headers_setup(channel, unique_name, binding_arguments):
    exchange, queue = unique_name("headers"), unique_name("q")
    channel.exchange_declare(exchange, exchange_type="headers")
    channel.queue_declare(queue)
    channel.queue_bind(queue, exchange, arguments=binding_arguments)
    return exchange, queue


def _headers_routed(channel, exchange, queue, headers):
    publish(channel, "ignored", b"m", exchange=exchange, headers=headers)
    return _bodies(channel, queue) == [b"m"]


def test_headers_exchange_with_x_match_all_needs_every_header(channel, unique_name):
    exchange, queue = _headers_setup(channel, unique_name,
                                     {"x-match": "all", "format": "pdf", "type": "report"})
    assert _headers_routed(channel, exchange, queue, {"format": "pdf", "type": "report"})
    assert _headers_routed(channel, exchange, queue, {"format": "pdf", "type": "report", "extra": 1})
    assert not _headers_routed(channel, exchange, queue, {"format": "pdf"})
    assert not _headers_routed(channel, exchange, queue, {"format": "pdf", "type": "log"})
    assert not _headers_routed(channel, exchange, queue, None)


def test_headers_exchange_with_x_match_any_needs_one_header(channel, unique_name):
    exchange, queue = _headers_setup(channel, unique_name,
                                     {"x-match": "any", "format": "pdf", "type": "report"})
    assert _headers_routed(channel, exchange, queue, {"format": "pdf"})
    assert _headers_routed(channel, exchange, queue, {"type": "report", "format": "zip"})
    assert not _headers_routed(channel, exchange, queue, {"format": "zip", "type": "log"})
    assert not _headers_routed(channel, exchange, queue, {})


def test_headers_binding_without_x_match_defaults_to_all(channel, unique_name):
    exchange, queue = _headers_setup(channel, unique_name, {"format": "pdf", "type": "report"})
    assert _headers_routed(channel, exchange, queue, {"format": "pdf", "type": "report"})
    assert not _headers_routed(channel, exchange, queue, {"format": "pdf"})


def test_headers_exchange_compares_values_by_type_and_value(channel, unique_name):
    exchange, queue = _headers_setup(channel, unique_name, {"x-match": "all", "n": 1})
    assert _headers_routed(channel, exchange, queue, {"n": 1})
    assert not _headers_routed(channel, exchange, queue, {"n": "1"})
    assert not _headers_routed(channel, exchange, queue, {"n": 2})


def test_headers_x_match_all_ignores_x_prefixed_message_headers(channel, unique_name):
    exchange, queue = _headers_setup(channel, unique_name,
                                     {"x-match": "all", "x-tenant": "acme", "kind": "a"})
    # With plain all/any, x- arguments on the binding are not compared at all.
    assert _headers_routed(channel, exchange, queue, {"kind": "a"})
    assert _headers_routed(channel, exchange, queue, {"kind": "a", "x-tenant": "other"})


def test_headers_x_match_all_with_x_also_compares_x_prefixed_headers(channel, unique_name):
    exchange, queue = _headers_setup(channel, unique_name,
                                     {"x-match": "all-with-x", "x-tenant": "acme", "kind": "a"})
    assert _headers_routed(channel, exchange, queue, {"kind": "a", "x-tenant": "acme"})
    assert not _headers_routed(channel, exchange, queue, {"kind": "a"})
    assert not _headers_routed(channel, exchange, queue, {"kind": "a", "x-tenant": "other"})


def test_headers_x_match_any_with_x_matches_on_an_x_prefixed_header(channel, unique_name):
    exchange, queue = _headers_setup(channel, unique_name,
                                     {"x-match": "any-with-x", "x-tenant": "acme", "kind": "a"})
    assert _headers_routed(channel, exchange, queue, {"x-tenant": "acme"})
    assert _headers_routed(channel, exchange, queue, {"kind": "a"})
    assert not _headers_routed(channel, exchange, queue, {"x-tenant": "other", "kind": "b"})
