"""The Kafka producer under every chipq producer: delivery callbacks, metrics, clean stop.

A background thread polls the librdkafka producer so delivery reports reach
both ``asyncio`` futures and blocking callers, and nothing waits on a
``flush()`` per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, Message, Producer

from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.errors import NotStartedError, PublishError

logger = logging.getLogger("chipq.events.producer")

Headers = Sequence[tuple[str, str | bytes | None]]
#: Called once per message: (None, report) on success, (reason, None) on failure.
OnDelivery = Callable[[str | None, "DeliveryReport | None"], None]


class DeliveryReport(NamedTuple):
    """Where an event landed."""

    topic: str
    partition: int
    offset: int


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class ProducerMetrics:
    """Counters and delivery latencies (the last 10,000) of one producer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages_sent = 0
        self.messages_failed = 0
        self.bytes_sent = 0
        self._latencies_ms: deque[float] = deque(maxlen=10_000)

    def delivered(self, size: int, latency_s: float) -> None:
        with self._lock:
            self.messages_sent += 1
            self.bytes_sent += size
            self._latencies_ms.append(latency_s * 1000.0)

    def failed(self) -> None:
        with self._lock:
            self.messages_failed += 1

    def snapshot(self, in_flight: int) -> dict[str, Any]:
        with self._lock:
            ordered = sorted(self._latencies_ms)
            return {
                "messages_sent": self.messages_sent,
                "messages_failed": self.messages_failed,
                "bytes_sent": self.bytes_sent,
                "messages_in_flight": in_flight,
                "latency_ms_p50": _percentile(ordered, 0.50),
                "latency_ms_p95": _percentile(ordered, 0.95),
                "latency_ms_p99": _percentile(ordered, 0.99),
                "latency_ms_max": ordered[-1] if ordered else 0.0,
            }


class ProducerCore:
    """An idempotent (acks=all, compressed) librdkafka producer with a polling thread."""

    def __init__(self, config: KafkaConfig, *, delivery_timeout_s: float = 30.0, **overrides: Any) -> None:
        self.config = config
        self.metrics = ProducerMetrics()
        self._conf = config.librdkafka_config(
            **{
                "enable.idempotence": True,
                "acks": "all",
                "compression.type": "lz4",
                "linger.ms": 5,
                "delivery.timeout.ms": int(delivery_timeout_s * 1000),
                "queue.buffering.max.messages": 200_000,
                **overrides,
            }
        )
        self.delivery_timeout_s = delivery_timeout_s
        self._producer: Producer | None = None
        self._poller: threading.Thread | None = None
        self._stopping = threading.Event()
        self._pending: dict[int, OnDelivery] = {}
        self._next_id = 0
        self._pending_lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._producer is not None

    def start(self) -> None:
        if self._producer is not None:
            return
        self._producer = Producer(self._conf)
        self._stopping.clear()
        self._poller = threading.Thread(target=self._poll_loop, name="chipq-producer-poll", daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        producer = self._producer
        while producer is not None and not self._stopping.is_set():
            producer.poll(0.05)

    def send(
        self, topic: str, value: bytes, key: str | bytes | None, headers: Headers, on_delivery: OnDelivery
    ) -> None:
        """Queue one message; ``on_delivery`` is called from the poll thread when Kafka answers."""
        producer = self._producer
        if producer is None:
            raise NotStartedError("producer is not started: call `await producer.start()` or use `async with`")
        with self._pending_lock:
            self._next_id += 1
            token = self._next_id
            self._pending[token] = on_delivery
        started = time.perf_counter()
        size = len(value)

        def delivered(err: KafkaError | None, msg: Message) -> None:
            with self._pending_lock:
                callback = self._pending.pop(token, None)
            if callback is None:
                return
            if err is not None:
                self.metrics.failed()
                callback(f"{err.name()}: {err.str()}", None)
            else:
                self.metrics.delivered(size, time.perf_counter() - started)
                callback(None, DeliveryReport(str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0)))

        deadline = started + self.delivery_timeout_s
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=list(headers), on_delivery=delivered)
                return
            except BufferError:  # local queue full: the poll thread drains it
                if time.perf_counter() > deadline:
                    self._fail(token, "local producer queue stayed full")
                    return
                time.sleep(0.005)
            except Exception as exc:  # e.g. message too large, unknown topic in the local config
                self._fail(token, f"{type(exc).__name__}: {exc}")
                return

    def _fail(self, token: int, reason: str) -> None:
        with self._pending_lock:
            callback = self._pending.pop(token, None)
        if callback is not None:
            self.metrics.failed()
            callback(reason, None)

    def in_flight(self) -> int:
        with self._pending_lock:
            return len(self._pending)

    def stop(self, timeout: float = 10.0) -> int:
        """Flush for at most ``timeout`` s; fail and count what was not delivered."""
        producer = self._producer
        if producer is None:
            return 0
        self._stopping.set()
        if self._poller is not None:
            self._poller.join()
        remaining = producer.flush(timeout)
        self._producer = None
        with self._pending_lock:
            orphans = list(self._pending)
        for token in orphans:
            self._fail(token, "producer stopped before Kafka acknowledged the event")
        if remaining or orphans:
            logger.warning("producer stopped with %d event(s) not delivered", max(remaining, len(orphans)))
        return max(remaining, len(orphans))


def future_callback(future: asyncio.Future[DeliveryReport]) -> OnDelivery:
    """A delivery callback resolving an asyncio future from the poll thread."""
    loop = future.get_loop()

    def resolve(reason: str | None, report: DeliveryReport | None) -> None:
        if future.done():
            return
        if reason is not None:
            future.set_exception(PublishError(f"event not delivered: {reason}", [(0, reason)]))
        else:
            future.set_result(report)  # type: ignore[arg-type]

    def on_delivery(reason: str | None, report: DeliveryReport | None) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(resolve, reason, report)

    return on_delivery
