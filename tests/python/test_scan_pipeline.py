"""The seed's AI scan pipeline (001: "AI 분류 작업 처리 시스템"), with pika against Postroom:

  Scan API --(envelope: message_id, trace_id)--> content-based router (direct exchange)
    --> scan-tasks, a priority queue --> three competing workers (prefetch 1)
    --> success: result broadcast (fanout) to analytics, rewards, notification
    --> failure: retried by the broker with exponential backoff, 3 times, then the DLQ
  and the Idempotent Receiver at the broker: a task published twice is processed once.

Retry, deduplication and their arguments are Postroom's, so this skips against another broker.
"""

import json
import os
import time
import uuid

import pika
import pytest

from conftest import close_quietly, connect

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("AMQP_URL")), reason="uses Postroom's retry and deduplication"
)

PRIORITY = {"high": 9, "normal": 5, "low": 1}
RETRY_DELAY_MS = 100
RETRIES = 3


def declare_pipeline(channel, names):
    channel.exchange_declare(names["router"], "direct")
    channel.exchange_declare(names["results"], "fanout")
    channel.queue_declare(names["dlq"])
    channel.queue_declare(
        names["scan"],
        arguments={
            "x-max-priority": 10,
            "x-retry-initial-delay": RETRY_DELAY_MS,
            "x-retry-multiplier": 2,
            "x-retry-jitter": 0,
            "x-delivery-limit": RETRIES,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": names["dlq"],
            "x-message-deduplication": True,
        },
    )
    channel.queue_declare(names["chat"])
    channel.queue_bind(names["scan"], names["router"], routing_key="scan")
    channel.queue_bind(names["chat"], names["router"], routing_key="chat")
    for subscriber in ("analytics", "rewards", "notification"):
        channel.queue_declare(names[subscriber])
        channel.queue_bind(names[subscriber], names["results"])


def scan_api_publish(channel, router, task):
    """The Scan API: wraps the task in an envelope and routes it by its type."""
    properties = pika.BasicProperties(
        message_id=task["task_id"],
        content_type="application/json",
        delivery_mode=2,
        priority=PRIORITY[task["priority"]],
        headers={"trace_id": task["trace_id"], "user_id": "user-7"},
    )
    channel.basic_publish(router, task["type"], json.dumps(task).encode(), properties)


class Worker:
    """One competing consumer on its own connection, prefetch 1, manual acks."""

    def __init__(self, url, names, name, log):
        self.name = name
        self.names = names
        self.log = log
        self.connection = connect(url)
        self.channel = self.connection.channel()
        self.channel.basic_qos(prefetch_count=1)
        self.channel.basic_consume(names["scan"], self.on_message)

    def on_message(self, channel, method, properties, body):
        task = json.loads(body)
        attempt = (properties.headers or {}).get("x-delivery-count", 0)
        self.log.append((time.monotonic(), self.name, task["task_id"], attempt, task["priority"]))
        if task.get("poison"):
            # The vision API fails for this image: the broker schedules the retry.
            channel.basic_nack(method.delivery_tag, requeue=True)
            return
        result = {"task_id": task["task_id"], "classification": "plastic"}
        channel.basic_publish(
            self.names["results"],
            "",
            json.dumps(result).encode(),
            pika.BasicProperties(headers={"trace_id": properties.headers["trace_id"]}),
        )
        channel.basic_ack(method.delivery_tag)


def drain(channel, queue):
    messages = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return messages
        messages.append((properties, body))


def test_the_ai_scan_pipeline(broker, amqp_url):
    suffix = uuid.uuid4().hex[:8]
    names = {
        key: f"{key}-{suffix}"
        for key in (
            "router", "results", "scan", "chat", "dlq", "analytics", "rewards", "notification"
        )
    }
    api = connect(amqp_url)
    channel = api.channel()
    channel.confirm_delivery()
    declare_pipeline(channel, names)

    tasks = []
    for i in range(24):
        priority = ["low", "normal", "high"][i % 3]
        tasks.append({
            "task_id": f"scan-{i}",
            "type": "scan",
            "priority": priority,
            "trace_id": f"trace-{i}",
            "poison": i in (4, 13),
        })
    # The queue fills before any worker runs, so priorities decide the order.
    for task in tasks:
        scan_api_publish(channel, names["router"], task)
    # The Scan API times out and publishes some tasks again: the broker drops the repeats.
    for task in tasks[:5]:
        scan_api_publish(channel, names["router"], task)
    scan_api_publish(channel, names["router"], {
        "task_id": "chat-1", "type": "chat", "priority": "normal", "trace_id": "t-chat",
    })

    log = []
    workers = [Worker(amqp_url, names, f"worker-{n}", log) for n in range(3)]
    healthy = [t["task_id"] for t in tasks if not t["poison"]]
    poison = [t["task_id"] for t in tasks if t["poison"]]
    expected_deliveries = len(healthy) + len(poison) * (RETRIES + 1)
    deadline = time.monotonic() + 20
    try:
        while len(log) < expected_deliveries and time.monotonic() < deadline:
            for worker in workers:
                worker.connection.process_data_events(time_limit=0.005)
        # Let the last dead-lettering happen.
        for _ in range(20):
            for worker in workers:
                worker.connection.process_data_events(time_limit=0.005)
    finally:
        for worker in workers:
            close_quietly(worker.connection)

    assert len(log) == expected_deliveries, log
    # Idempotent Receiver: every healthy task was processed exactly once, repeats included.
    first_attempts = [task_id for _, _, task_id, attempt, _ in log if attempt == 0]
    assert sorted(first_attempts) == sorted(t["task_id"] for t in tasks)
    # Competing consumers: the work was shared out.
    assert len({worker for _, worker, _, _, _ in log}) == 3
    # Priority queue: the high-priority tasks went out first.
    first_priorities = [priority for _, _, _, _, priority in log[:8]]
    assert first_priorities == ["high"] * 8, first_priorities

    # Retry with backoff: each poison task came back 3 times, each wait longer than the last.
    for task_id in poison:
        attempts = [(at, attempt) for at, _, t, attempt, _ in log if t == task_id]
        assert [attempt for _, attempt in attempts] == [0, 1, 2, 3]
        waits = [b[0] - a[0] for a, b in zip(attempts, attempts[1:])]
        for n, wait in enumerate(waits):
            backoff = RETRY_DELAY_MS * 2**n / 1000
            assert wait >= backoff * 0.95, f"{task_id}: retry {n + 1} after {wait:.3f} s"
        assert waits[0] < waits[1] < waits[2], waits

    # Dead Letter Channel: after the 3rd retry the poison tasks are in the DLQ with x-death.
    dead = drain(channel, names["dlq"])
    assert sorted(json.loads(body)["task_id"] for _, body in dead) == sorted(poison)
    for properties, _ in dead:
        death = properties.headers["x-death"][0]
        assert death["reason"] == "delivery_limit"
        assert death["queue"] == names["scan"]
        assert death["exchange"] == names["router"]
        assert death["routing-keys"] == ["scan"]
        assert death["count"] == 1
        assert properties.headers["x-first-death-reason"] == "delivery_limit"
        assert properties.message_id.startswith("scan-")
        assert properties.headers["trace_id"].startswith("trace-"), "the envelope is kept"

    # Publish-subscribe: every subscriber got every result, with the trace id.
    for subscriber in ("analytics", "rewards", "notification"):
        results = drain(channel, names[subscriber])
        assert sorted(json.loads(body)["task_id"] for _, body in results) == sorted(healthy)
        assert all(p.headers["trace_id"].startswith("trace-") for p, _ in results)
    # Content-based router: the chat task went to its own queue only.
    assert [json.loads(body)["task_id"] for _, body in drain(channel, names["chat"])] == ["chat-1"]

    for queue in ("scan", "chat", "dlq", "analytics", "rewards", "notification"):
        channel.queue_delete(names[queue])
    channel.exchange_delete(names["router"])
    channel.exchange_delete(names["results"])
    api.close()
