"""The pika example from seed 004 (message-queue primer) runs unchanged against the broker.

``MessageProducer`` and ``MessageConsumer`` are copied verbatim from the seed. They only take a
host, so the test points ``pika.ConnectionParameters`` at the broker under test for its duration;
the classes themselves are not modified.
"""

import json
from dataclasses import asdict, dataclass
from typing import Callable

import pika
import pytest

from conftest import connect, message_count


# ---- copied verbatim from seeds/004 (print/comments included) ------------------------------

# ========================================
# Producer (발행자)
# ========================================
class MessageProducer:
    def __init__(self, host: str = 'localhost'):
        self.connection = pika.BlockingConnection(
            pika.ConnectionParameters(host=host)
        )
        self.channel = self.connection.channel()

    def declare_queue(self, queue_name: str, durable: bool = True):
        """큐 선언 - durable=True면 브로커 재시작 시에도 유지"""
        self.channel.queue_declare(queue=queue_name, durable=durable)

    def publish(self, queue_name: str, message: dict):
        """메시지 발행"""
        self.channel.basic_publish(
            exchange='',
            routing_key=queue_name,
            body=json.dumps(message),
            properties=pika.BasicProperties(
                delivery_mode=2,  # 메시지 영속성 (디스크에 저장)
                content_type='application/json'
            )
        )
        print(f"[x] Sent: {message}")

    def close(self):
        self.connection.close()


# ========================================
# Consumer (소비자)
# ========================================
class MessageConsumer:
    def __init__(self, host: str = 'localhost'):
        self.connection = pika.BlockingConnection(
            pika.ConnectionParameters(host=host)
        )
        self.channel = self.connection.channel()

    def consume(self, queue_name: str, callback: Callable):
        """
        메시지 소비 시작
        - auto_ack=False: 수동 ACK (처리 완료 후 확인)
        - prefetch_count=1: 한 번에 하나씩 처리
        """
        self.channel.queue_declare(queue=queue_name, durable=True)
        self.channel.basic_qos(prefetch_count=1)

        def wrapper(ch, method, properties, body):
            message = json.loads(body)
            try:
                callback(message)
                # 성공 시 ACK - 메시지가 큐에서 제거됨
                ch.basic_ack(delivery_tag=method.delivery_tag)
            except Exception as e:
                print(f"[!] Error: {e}")
                # 실패 시 NACK - 메시지를 다시 큐에 넣음
                ch.basic_nack(delivery_tag=method.delivery_tag, requeue=True)

        self.channel.basic_consume(queue=queue_name, on_message_callback=wrapper)
        print(f"[*] Waiting for messages in {queue_name}")
        self.channel.start_consuming()


@dataclass
class OrderEvent:
    order_id: str
    user_id: str
    product_id: str
    quantity: int
    total_price: float

# ---- end of the seed code --------------------------------------------------------------------


@pytest.fixture
def seed_points_at_broker(monkeypatch, amqp_url):
    """Make the seed's ``pika.ConnectionParameters(host=...)`` connect to the broker under test."""
    def parameters(host='localhost', **_ignored):
        params = pika.URLParameters(amqp_url)
        params.connection_attempts = 1
        params.socket_timeout = 5
        return params

    monkeypatch.setattr(pika, "ConnectionParameters", parameters)


def test_seed_order_consumer_nacks_a_failed_order_then_acks_its_redelivery(
    seed_points_at_broker, unique_name, amqp_url
):
    queue_name = unique_name("orders")
    order = OrderEvent(order_id="ORD-12345", user_id="USER-001", product_id="PROD-100",
                       quantity=2, total_price=59000.0)

    producer = MessageProducer()
    producer.declare_queue(queue_name)
    producer.publish(queue_name, asdict(order))
    producer.close()

    consumer = MessageConsumer()
    deliveries = []  # (redelivered, content_type, delivery_mode) per delivery seen by the seed
    handled = []
    original_basic_consume = consumer.channel.basic_consume

    def observing_basic_consume(queue, on_message_callback, **kwargs):
        def observed(ch, method, properties, body):
            deliveries.append((method.redelivered, properties.content_type, properties.delivery_mode))
            on_message_callback(ch, method, properties, body)
        return original_basic_consume(queue, on_message_callback=observed, **kwargs)

    consumer.channel.basic_consume = observing_basic_consume

    def process_order(message):
        handled.append(message)
        if len(handled) == 1:
            raise RuntimeError("payment service unavailable")
        # Stop after the seed's wrapper has acked this delivery.
        consumer.connection.call_later(0, consumer.channel.stop_consuming)

    # Safety net: start_consuming must not block the suite if the redelivery never comes.
    consumer.connection.call_later(10, consumer.channel.stop_consuming)
    consumer.consume(queue_name, process_order)
    consumer.connection.close()

    assert handled == [asdict(order), asdict(order)]
    assert deliveries == [
        (False, "application/json", 2),
        (True, "application/json", 2),
    ]
    check = connect(amqp_url)
    try:
        assert message_count(check.channel(), queue_name) == 0
    finally:
        check.close()
