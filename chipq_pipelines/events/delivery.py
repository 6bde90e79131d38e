"""The Kafka producer under every chipq producer: delivery callbacks, metrics, clean stop.

A background thread polls the librdkafka producer so delivery reports reach
both ``asyncio`` futures and blocking callers, and nothing waits on a
``flush()`` per event. Batches are produced in one tight loop and tracked as
one unit (one small callback per message, one notification per batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.errors import NotStartedError, PublishError, TopicNotFoundError

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


#: One outcome per message of a batch: its report, or why it was not delivered.
Outcome = DeliveryReport | str
#: Called once per batch, when every message has an outcome (in the batch's order).
OnBatchDone = Callable[[list[Outcome]], None]
#: (value, key, headers) of one message of a batch.
OutgoingMessage = tuple[bytes, str | bytes | None, list[tuple[str, str | bytes | None]]]


class _Batch:
    """Outcomes of messages queued together; librdkafka's callbacks may run on any polling thread.

    One lock (the metrics') guards outcomes, the remaining count and the
    counters, so a message is counted exactly once, either sent or failed,
    and its counters are updated before the batch is reported done.
    """

    __slots__ = ("metrics", "on_done", "outcomes", "release", "remaining", "sent_at", "sizes")

    def __init__(self, metrics: ProducerMetrics, count: int, on_done: OnBatchDone) -> None:
        self.metrics = metrics
        self.outcomes: list[Outcome | None] = [None] * count
        self.sizes = [0] * count
        self.sent_at = [0.0] * count
        self.remaining = count
        self.on_done = on_done
        self.release: Callable[[], None] | None = None

    def delivered(self, index: int, err: KafkaError | None, msg: Message) -> None:
        """librdkafka's delivery callback of message ``index`` (bound with ``functools.partial``)."""
        if err is not None:
            self.fail(index, f"{err.name()}: {err.str()}")
            return
        latency_ms = (time.perf_counter() - self.sent_at[index]) * 1000.0
        report = DeliveryReport(str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0))
        metrics = self.metrics
        with metrics._lock:
            if self.outcomes[index] is not None:
                return
            self.outcomes[index] = report
            metrics.messages_sent += 1
            metrics.bytes_sent += self.sizes[index]
            metrics._latencies_ms.append(latency_ms)
            self.remaining -= 1
            last = self.remaining == 0
        if last:
            self._finish()

    def fail(self, index: int, reason: str) -> None:
        metrics = self.metrics
        with metrics._lock:
            if self.outcomes[index] is not None:
                return
            self.outcomes[index] = reason
            metrics.messages_failed += 1
            self.remaining -= 1
            last = self.remaining == 0
        if last:
            self._finish()

    def fail_open(self, reason: str) -> int:
        """Fail every message without an outcome yet; return how many."""
        open_ = [i for i, outcome in enumerate(self.outcomes) if outcome is None]
        for index in open_:
            self.fail(index, reason)
        return len(open_)

    def _finish(self) -> None:
        if self.release is not None:
            self.release()
        self.on_done([o for o in self.outcomes if o is not None])


#: How long the first publish to a topic waits for the cluster to say whether the topic exists.
TOPIC_CHECK_TIMEOUT_S = 5.0
#: A topic created a moment ago may be unknown to some brokers for a while: "unknown" must persist this long.
TOPIC_PROPAGATION_S = 1.0
#: After a check the cluster did not answer, publishes go ahead unchecked for this long before the next try.
TOPIC_RECHECK_AFTER_S = 30.0
_UNKNOWN_TOPIC = (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC)


class ProducerCore:
    """An idempotent (acks=all, compressed) librdkafka producer with a polling thread.

    The first send to a topic asks the cluster whether the topic exists (once; the
    answer is kept): a missing topic fails at once with ``TopicNotFoundError``
    instead of waiting out the delivery timeout, since brokers here never
    create topics on first use.
    """

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
                "error_cb": self._on_client_error,
                **overrides,
            }
        )
        #: Set once the client cannot work at all (wrong credentials): every send fails with it.
        self.fatal_reason: str | None = None
        self.delivery_timeout_s = delivery_timeout_s
        self._producer: Producer | None = None
        self._poller: threading.Thread | None = None
        self._stopping = threading.Event()
        self._pending: dict[int, _Batch] = {}
        self._next_id = 0
        self._pending_lock = threading.Lock()
        self._known_topics: set[str] = set()
        self._unchecked_until: dict[str, float] = {}

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

    def _on_client_error(self, error: KafkaError) -> None:
        """librdkafka's client-level errors (poll thread): a wrong password fails every batch at once.

        Without this a publish would wait for its delivery timeout and then say
        only "message timed out". The reason carries no secret (librdkafka never
        prints the password).
        """
        if error.code() == KafkaError._AUTHENTICATION:
            reason = f"authentication failed: {error.str()} (check KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD)"
        elif error.fatal():
            reason = f"fatal producer error: {error.str()}"
        else:
            logger.warning("kafka producer: %s", error.str())
            return
        if self.fatal_reason is None:
            logger.error("kafka producer: %s", reason)
        self.fatal_reason = reason
        with self._pending_lock:
            batches = list(self._pending.values())
        for batch in batches:
            batch.fail_open(reason)

    def topic_checked(self, topic: str) -> bool:
        """True when sending to ``topic`` needs no metadata request first (known, or checked a moment ago)."""
        return topic in self._known_topics or time.monotonic() < self._unchecked_until.get(topic, 0.0)

    def check_topic(self, topic: str, timeout: float = TOPIC_CHECK_TIMEOUT_S) -> None:
        """Raise ``TopicNotFoundError`` when the cluster says ``topic`` does not exist (blocking, once per topic).

        A topic that exists is remembered. When the cluster does not answer within
        ``timeout`` the send goes ahead (the delivery timeout reports the outage, as
        without this check) and the topic is asked about again later.
        """
        producer = self._producer
        if producer is None or self.topic_checked(topic):
            return
        started = time.monotonic()
        unknown_since: float | None = None
        while self.fatal_reason is None and (now := time.monotonic()) < started + timeout:
            try:
                metadata = producer.list_topics(topic, timeout=min(1.0, started + timeout - now))
            except KafkaException:
                continue
            found = metadata.topics.get(topic)
            error = None if found is None else found.error
            if found is not None and (error is None or error.code() not in _UNKNOWN_TOPIC):
                self._known_topics.add(topic)  # a leader election in progress still means it exists
                return
            unknown_since = unknown_since or now
            if now - unknown_since >= TOPIC_PROPAGATION_S:
                raise TopicNotFoundError(topic, self.config.bootstrap_servers)
            time.sleep(0.1)
        self._unchecked_until[topic] = time.monotonic() + TOPIC_RECHECK_AFTER_S

    def _poll_loop(self) -> None:
        producer = self._producer
        while producer is not None and not self._stopping.is_set():
            producer.poll(0.05)

    def send(
        self, topic: str, value: bytes, key: str | bytes | None, headers: Headers, on_delivery: OnDelivery
    ) -> None:
        """Queue one message; ``on_delivery`` is called from the poll thread when Kafka answers."""

        def done(outcomes: list[Outcome]) -> None:
            outcome = outcomes[0]
            if isinstance(outcome, DeliveryReport):
                on_delivery(None, outcome)
            else:
                on_delivery(outcome, None)

        self.send_batch(topic, [(value, key, list(headers))], done)

    def send_batch(
        self, topic: str, messages: Iterable[OutgoingMessage], on_done: OnBatchDone, count: int | None = None
    ) -> None:
        """Queue messages in a tight loop; ``on_done(outcomes)`` is called once, when Kafka answered them all.

        Outcomes are in the order of ``messages``: a ``DeliveryReport`` per
        acknowledged message, else the reason it failed. ``on_done`` runs on a
        polling thread (or right here, when nothing could be queued).
        ``messages`` may be a generator (build headers as they are produced)
        when ``count`` says how many it yields. Raises ``TopicNotFoundError``,
        with nothing queued, when the topic does not exist; the first send to a
        topic waits for that answer (async callers run ``check_topic`` in a
        thread first, see ``ensure_topic``).
        """
        producer = self._producer
        if producer is None:
            raise NotStartedError("producer is not started: call `await producer.start()` or use `async with`")
        if not self.topic_checked(topic):
            self.check_topic(topic)
        if count is None:
            messages = list(messages)
            count = len(messages)
        batch = _Batch(self.metrics, count, on_done)
        if not count:
            on_done([])
            return
        with self._pending_lock:
            self._next_id += 1
            token = self._next_id
            self._pending[token] = batch
        batch.release = partial(self._release, token)
        if self.fatal_reason is not None:
            batch.fail_open(self.fatal_reason)
            return
        produce = producer.produce
        deliver = batch.delivered
        sizes = batch.sizes
        sent_at = batch.sent_at
        clock = time.perf_counter
        for index, (value, key, headers) in enumerate(messages):
            sizes[index] = len(value)
            sent_at[index] = clock()
            try:
                produce(topic, value, key, on_delivery=partial(deliver, index), headers=headers)
            except BufferError:  # local queue full: serve delivery reports until there is room
                self._produce_when_room(producer, batch, index, topic, value, key, headers)
            except Exception as exc:  # e.g. message too large, unknown topic in the local config
                batch.fail(index, f"{type(exc).__name__}: {exc}")

    def _produce_when_room(
        self,
        producer: Producer,
        batch: _Batch,
        index: int,
        topic: str,
        value: bytes,
        key: str | bytes | None,
        headers: list[tuple[str, str | bytes | None]],
    ) -> None:
        deadline = batch.sent_at[index] + self.delivery_timeout_s
        while True:
            producer.poll(0.005)
            try:
                producer.produce(topic, value, key, on_delivery=partial(batch.delivered, index), headers=headers)
                return
            except BufferError:
                if time.perf_counter() > deadline:
                    batch.fail(index, "local producer queue stayed full")
                    return
            except Exception as exc:
                batch.fail(index, f"{type(exc).__name__}: {exc}")
                return

    def _release(self, token: int) -> None:
        with self._pending_lock:
            self._pending.pop(token, None)

    def in_flight(self) -> int:
        with self._pending_lock:
            batches = list(self._pending.values())
        return sum(batch.remaining for batch in batches)

    def stop(self, timeout: float = 10.0) -> int:
        """Flush for at most ``timeout`` s; fail and count what was not delivered."""
        producer = self._producer
        if producer is None:
            return 0
        self._stopping.set()
        if self._poller is not None:
            self._poller.join()
        if self.fatal_reason is not None:
            # Nothing can reach the cluster (e.g. wrong credentials): do not wait for the flush.
            producer.purge()
            timeout = 0
        remaining = producer.flush(timeout)
        self._producer = None
        with self._pending_lock:
            orphans = list(self._pending.values())
        failed = sum(batch.fail_open("producer stopped before Kafka acknowledged the event") for batch in orphans)
        if remaining or failed:
            logger.warning("producer stopped with %d event(s) not delivered", max(remaining, failed))
        return max(remaining, failed)


async def ensure_topic(core: ProducerCore, topic: str) -> None:
    """``core.check_topic`` without blocking the event loop; free once the topic is known."""
    if not core.topic_checked(topic):
        await asyncio.to_thread(core.check_topic, topic)


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
