"""BaseEventConsumer: decode, handle, commit after success, dead-letter what cannot be handled.

* Auto-commit is off: an offset moves only after its record's handler
  succeeded (or the record went to the dead-letter topic).
* A new group starts from the earliest offset.
* ``consume``/``consume_with_retry`` are cancellation-safe: records already
  polled stay in this consumer's buffer, and a record whose handler was
  interrupted is handled again by the next call. Nothing polled is skipped.
* A record that cannot be decoded, or whose handler still fails after the
  retries, goes to ``<topic>.dlq`` with its raw bytes, key, headers, the reason
  and its original coordinates, then is committed: no stall, no drop.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self, cast

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.context import log_event, redact_urls
from chipq_pipelines.events.delivery import DeliveryReport, ProducerCore, ensure_topic, future_callback
from chipq_pipelines.events.errors import (
    ConsumerError,
    DeserializationError,
    NotStartedError,
    SchemaRegistryUnavailableError,
)
from chipq_pipelines.events.schemas import SchemaRef
from chipq_pipelines.events.serialization import AvroSerializer, SchemaLike
from chipq_pipelines.events.topics import dlq_topic

logger = logging.getLogger("chipq.events.consumer")

Handler = Callable[[dict[str, Any], "ConsumedRecord"], Awaitable[Any] | Any]
_TP = tuple[str, int]


@dataclass(frozen=True)
class ConsumedRecord:
    """Where a decoded event came from (passed to handlers next to the event)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int | None
    schema: SchemaRef

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode(errors="replace") if value is not None else None
        return None


class AsyncConsumerHandle:
    """``self.consumer`` of a BaseEventConsumer: the guide's ``await self.consumer.commit()``."""

    def __init__(self, owner: BaseEventConsumer, consumer: Consumer) -> None:
        self._owner = owner
        self.raw = consumer

    async def commit(self) -> None:
        """Commit every handled record, including the one being handled now."""
        self._owner._commit(synchronous=True, include_current=True)

    def assignment(self) -> list[TopicPartition]:
        return list(self.raw.assignment())


class BaseEventConsumer:
    """Consume Avro events from ``topics`` in consumer group ``group_id``.

    ``schema`` is the reader schema for records of its record name; ``readers``
    adds reader schemas for other record names. Subclasses implement
    ``process_event(event_data, record)``.
    """

    def __init__(
        self,
        topics: Sequence[str],
        group_id: str,
        schema: SchemaLike | None = None,
        config: KafkaConfig | None = None,
        *,
        readers: list[SchemaLike] | None = None,
        commit_every: int = 500,
        commit_interval_s: float = 1.0,
        retry_backoff_s: float = 0.2,
        max_retry_backoff_s: float = 5.0,
        poll_batch: int = 500,
    ) -> None:
        self.topics = list(topics)
        self.group_id = group_id
        self.config = config or KafkaConfig.from_env()
        self.serializer = AvroSerializer(schema, readers=readers, config=self.config)
        self.consumer: AsyncConsumerHandle | None = None
        self._kafka: Consumer | None = None
        self._dlq = ProducerCore(self.config)
        self._buffer: collections.deque[Message] = collections.deque()
        self._current: Message | None = None
        self._processed: dict[_TP, int] = {}
        self._committed: dict[_TP, int] = {}
        self._high_watermarks: dict[_TP, int] = {}
        self._since_commit = 0
        self._last_commit = time.monotonic()
        self._commit_every = commit_every
        self._commit_interval_s = commit_interval_s
        self._retry_backoff_s = retry_backoff_s
        self._max_retry_backoff_s = max_retry_backoff_s
        self._poll_batch = poll_batch
        self._stopping = False
        self._active_loops = 0
        self._counts = collections.Counter[str]()
        self._missing_topics_reported: set[str] = set()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Join the group (subscription); partitions are assigned on the first polls."""
        if self._kafka is not None:
            return
        conf = self.config.librdkafka_config(
            **{
                "group.id": self.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "on_commit": self._on_commit,
            }
        )
        self._kafka = Consumer(conf)
        self._kafka.subscribe(self.topics, on_revoke=self._on_revoke, on_lost=self._on_revoke)
        self.consumer = AsyncConsumerHandle(self, self._kafka)
        self._dlq.start()
        self._stopping = False
        log_event(logger, logging.INFO, "consumer started", group=self.group_id, topics=",".join(self.topics))

    async def stop(self, timeout: float = 30.0) -> None:
        """Let running consume loops finish their record, commit, leave the group."""
        self._stopping = True
        deadline = time.monotonic() + timeout
        while self._active_loops and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        kafka = self._kafka
        if kafka is not None:
            self._commit(synchronous=True)
            self._kafka = None
            await asyncio.to_thread(kafka.close)
        await asyncio.to_thread(self._dlq.stop)
        log_event(logger, logging.INFO, "consumer stopped", group=self.group_id, **self._counts)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -------------------------------------------------------------- consume

    async def process_event(self, event_data: dict[str, Any], record: ConsumedRecord) -> None:
        """Handle one event; subclasses override (the default does nothing)."""

    async def consume(self, handler: Handler, max_messages: int | None = None, timeout: float | None = None) -> int:
        """Handle records until ``max_messages`` were handled, ``timeout`` s passed, or ``stop()``.

        A failing handler is not retried: its record is dead-lettered. Returns
        how many records were handled (dead-lettered ones included).
        """
        return await self._run(handler, 0, max_messages, timeout)

    async def consume_with_retry(
        self, handler: Handler, max_retries: int = 3, max_messages: int | None = None, timeout: float | None = None
    ) -> int:
        """Like ``consume``, retrying a failing handler with exponential backoff before dead-lettering."""
        return await self._run(handler, max_retries, max_messages, timeout)

    async def _run(self, handler: Handler, max_retries: int, max_messages: int | None, timeout: float | None) -> int:
        kafka = self._kafka
        if kafka is None:
            if self._stopping:
                return 0
            raise NotStartedError("consumer is not started: call `await consumer.start()` first")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        handled = 0
        idle_sleep = 0.001
        cancelled = False
        self._active_loops += 1
        try:
            while not self._stopping:
                if max_messages is not None and handled >= max_messages:
                    break
                if deadline is not None and loop.time() >= deadline:
                    break
                if not self._buffer:
                    self._fill_buffer(kafka)
                    if not self._buffer:
                        self._maybe_commit(idle=True)
                        wait = idle_sleep if deadline is None else max(0.0, min(idle_sleep, deadline - loop.time()))
                        await asyncio.sleep(wait)
                        idle_sleep = min(idle_sleep * 2, 0.05)
                        continue
                    idle_sleep = 0.001
                message = self._buffer.popleft()
                done = False
                try:
                    await self._handle(message, handler, max_retries)
                    done = True
                finally:
                    if not done:  # cancelled or failed mid-record: handle it again next time
                        self._buffer.appendleft(message)
                handled += 1
                self._maybe_commit()
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            self._active_loops -= 1
            if self._kafka is not None:
                self._commit(synchronous=not cancelled)
        return handled

    def _fill_buffer(self, kafka: Consumer) -> None:
        for message in kafka.consume(self._poll_batch, 0):
            error = message.error()
            if error is None:
                self._buffer.append(message)
            elif error.fatal():
                raise ConsumerError(f"fatal Kafka error: {error.str()}")
            elif error.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                self._warn_missing_topic(error)
            elif error.code() != KafkaError._PARTITION_EOF:
                log_event(logger, logging.WARNING, "consumer error", group=self.group_id, error=error.str())

    def _warn_missing_topic(self, error: KafkaError) -> None:
        """Say once which subscribed topic is missing and how to create it (the consumer waits for it)."""
        missing = [t for t in self.topics if t in error.str()] or self.topics
        for topic in missing:
            if topic not in self._missing_topics_reported:
                self._missing_topics_reported.add(topic)
                log_event(
                    logger,
                    logging.WARNING,
                    "subscribed topic does not exist; waiting for it: create it with `chipq topics create`",
                    group=self.group_id,
                    topic=topic,
                    bootstrap_servers=self.config.bootstrap_servers,
                )

    async def _handle(self, message: Message, handler: Handler, max_retries: int) -> None:
        self._counts["messages_consumed"] += 1
        raw = message.value() or b""
        waited = 0
        while True:
            try:
                event, schema = self.serializer.decode(raw)
                break
            except DeserializationError as exc:
                self._counts["messages_failed"] += 1
                await self._dead_letter(message, f"{type(exc).__name__}: {exc.reason}")
                self._store(message)
                return
            except SchemaRegistryUnavailableError as exc:
                # Not the record's fault: never dead-letter it; wait for the registry, then decode it again.
                if self._stopping:
                    return  # not stored: its offset is not committed, the next consumer decodes it
                self._counts["registry_waits"] += 1
                delay = min(self._retry_backoff_s * 2**waited, self._max_retry_backoff_s)
                waited += 1
                log_event(
                    logger,
                    logging.WARNING,
                    "schema registry unavailable; waiting to decode the record again",
                    topic=message.topic(),
                    partition=message.partition(),
                    offset=message.offset(),
                    attempt=waited,
                    error=redact_urls(exc.reason),
                )
                await asyncio.sleep(delay)
        record = ConsumedRecord(
            topic=str(message.topic()),
            partition=int(message.partition() or 0),
            offset=int(message.offset() or 0),
            key=_as_bytes(message.key()),
            value=raw,
            headers=tuple(cast(list[tuple[str, bytes]], message.headers() or [])),
            timestamp_ms=message.timestamp()[1] if message.timestamp()[0] else None,
            schema=schema,
        )
        attempt = 0
        self._current = message
        try:
            while True:
                try:
                    result = handler(event, record)
                    if inspect.isawaitable(result):
                        await result
                    self._counts["messages_processed"] += 1
                    break
                except Exception as exc:
                    attempt += 1
                    if attempt > max_retries:
                        self._counts["messages_failed"] += 1
                        # No secret (a webhook URL in an httpx error) goes to the DLQ headers or the logs.
                        reason = redact_urls(f"handler failed after {attempt} attempt(s): {type(exc).__name__}: {exc}")
                        await self._dead_letter(message, reason)
                        break
                    self._counts["messages_retried"] += 1
                    backoff = min(self._retry_backoff_s * 2 ** (attempt - 1), self._max_retry_backoff_s)
                    log_event(
                        logger,
                        logging.WARNING,
                        "handler failed, retrying",
                        attempt=attempt,
                        error=redact_urls(repr(exc)),
                    )
                    await asyncio.sleep(backoff)
        finally:
            self._current = None
        self._store(message)

    async def _dead_letter(self, message: Message, reason: str) -> DeliveryReport:
        topic = str(message.topic())
        headers = list(cast(list[tuple[str, str | bytes | None]], message.headers() or []))
        headers += [
            ("dlq.reason", reason),
            ("dlq.original.topic", topic),
            ("dlq.original.partition", str(message.partition())),
            ("dlq.original.offset", str(message.offset())),
            ("dlq.original.timestamp", str(message.timestamp()[1])),
            ("dlq.consumer.group", self.group_id),
            ("dlq.failed_at", datetime.now(UTC).isoformat()),
        ]
        await ensure_topic(self._dlq, dlq_topic(topic))  # a missing DLQ: TopicNotFoundError, the record stays
        future: asyncio.Future[DeliveryReport] = asyncio.get_running_loop().create_future()
        self._dlq.send(dlq_topic(topic), message.value() or b"", message.key(), headers, future_callback(future))
        report = await future  # never commit a record the DLQ has not acknowledged
        self._counts["messages_dead_lettered"] += 1
        log_event(
            logger,
            logging.WARNING,
            "record dead-lettered",
            topic=topic,
            partition=message.partition(),
            offset=message.offset(),
            dlq=report.topic,
            reason=reason,
        )
        return report

    # -------------------------------------------------------------- offsets

    def _store(self, message: Message) -> None:
        self._processed[(str(message.topic()), int(message.partition() or 0))] = int(message.offset() or 0) + 1
        self._since_commit += 1

    def _maybe_commit(self, idle: bool = False) -> None:
        due = self._since_commit >= self._commit_every or (
            self._since_commit and (idle or time.monotonic() - self._last_commit >= self._commit_interval_s)
        )
        if due:
            self._commit(synchronous=False)

    def _commit(self, synchronous: bool, include_current: bool = False) -> None:
        kafka = self._kafka
        if kafka is None:
            return
        offsets = dict(self._processed)
        if include_current and self._current is not None:
            current = self._current
            offsets[(str(current.topic()), int(current.partition() or 0))] = int(current.offset() or 0) + 1
        todo = [TopicPartition(t, p, o) for (t, p), o in offsets.items() if self._committed.get((t, p)) != o]
        self._since_commit = 0
        self._last_commit = time.monotonic()
        if not todo:
            return
        try:
            if synchronous:
                kafka.commit(offsets=todo, asynchronous=False)
            else:
                kafka.commit(offsets=todo, asynchronous=True)
        except Exception as exc:  # e.g. no longer assigned after a rebalance; the new owner re-reads
            log_event(logger, logging.WARNING, "commit failed", group=self.group_id, error=str(exc))
            return
        self._counts["commits"] += 1
        for tp in todo:
            self._committed[(tp.topic, tp.partition)] = tp.offset

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if error is not None:
            log_event(logger, logging.WARNING, "commit failed", group=self.group_id, error=str(error))

    def _on_revoke(self, kafka: Consumer, partitions: list[TopicPartition]) -> None:
        # Commit what was handled and drop what was polled but not handled:
        # the partition's next owner reads it from the committed offset.
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self._commit(synchronous=True)
        self._buffer = collections.deque(m for m in self._buffer if (m.topic(), m.partition()) not in revoked)
        for tp in revoked:
            self._processed.pop(tp, None)
            self._committed.pop(tp, None)

    # -------------------------------------------------------------- metrics

    def get_metrics(self) -> dict[str, Any]:
        """``messages_consumed``, ``messages_processed``, ``messages_failed``, dead-lettered, lag per partition."""
        lag: dict[str, int] = {}
        kafka = self._kafka
        if kafka is not None:
            try:
                for tp in kafka.assignment():
                    _low, high = kafka.get_watermark_offsets(tp, cached=True)
                    key = (tp.topic, tp.partition)
                    if high >= 0:
                        self._high_watermarks[key] = high
                    done = self._processed.get(key, self._committed.get(key))
                    if done is None:
                        committed = kafka.committed([tp], timeout=2)[0].offset
                        done = committed if committed >= 0 else 0
                    lag[f"{tp.topic}[{tp.partition}]"] = max(0, self._high_watermarks.get(key, done) - done)
            except Exception as exc:  # metrics must not break the caller
                log_event(logger, logging.DEBUG, "lag unavailable", error=str(exc))
        return {
            "messages_consumed": self._counts["messages_consumed"],
            "messages_processed": self._counts["messages_processed"],
            "messages_failed": self._counts["messages_failed"],
            "messages_retried": self._counts["messages_retried"],
            "messages_dead_lettered": self._counts["messages_dead_lettered"],
            "registry_waits": self._counts["registry_waits"],
            "commits": self._counts["commits"],
            "buffered": len(self._buffer),
            "lag": lag,
            "total_lag": sum(lag.values()),
        }


def _as_bytes(key: Any) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    return str(key).encode()
