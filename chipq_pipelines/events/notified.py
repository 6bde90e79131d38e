"""Which alerts a consumer group already notified: a compacted Kafka topic keyed by event id.

``NotificationConsumer`` notifies once per event id, across restarts and across the
replicas of one group: every replica loads ``<group>.notified`` at start and reads its
tail before each decision, and writes an event's id there after notifying and before the
record's offset is committed. The topic is created if missing, compacted (one record per
id) and bounded by retention (``retention_ms``, 30 days by default: an alert re-delivered
later than that is notified again).

What remains at least once: a crash between the notification and the write of its id
(milliseconds) notifies again on restart; the id goes to the notifier (``event_id``, and
the webhook's ``Idempotency-Key`` header), so a receiver can drop that second delivery.
Two replicas racing on the same id (possible only during a rebalance) can both notify.
"""

from __future__ import annotations

import logging
import threading
import uuid

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.context import log_event
from chipq_pipelines.events.errors import PublishError
from chipq_pipelines.events.topic_admin import create_topics
from chipq_pipelines.events.topics import TopicSpec

logger = logging.getLogger("chipq.events.notified")

RETENTION_MS = 30 * 24 * 3600 * 1000


def notified_topic(group_id: str) -> str:
    """The topic holding the ids ``group_id`` notified."""
    return f"{group_id}.notified"


class NotifiedLog:
    """The set of notified event ids of one group, kept in (and shared through) a compacted topic."""

    def __init__(
        self,
        config: KafkaConfig,
        group_id: str,
        *,
        retention_ms: int = RETENTION_MS,
        replication_factor: int = 1,
        timeout_s: float = 30.0,
    ) -> None:
        self.config = config
        self.topic = notified_topic(group_id)
        self.retention_ms = retention_ms
        self.replication_factor = replication_factor
        self.timeout_s = timeout_s
        self._ids: set[str] = set()
        self._reader: Consumer | None = None
        self._writer: Producer | None = None
        self._lock = threading.Lock()

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def start(self) -> None:
        """Create the topic if missing, then read it to its end (blocking)."""
        if self._reader is not None:
            return
        self._ensure_topic()
        reader = Consumer(
            self.config.librdkafka_config(
                **{
                    "group.id": f"{self.topic}-reader-{uuid.uuid4().hex}",  # assign() only: never joins or commits
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                }
            )
        )
        partitions = reader.list_topics(self.topic, timeout=self.timeout_s).topics[self.topic].partitions
        ends = {
            p: reader.get_watermark_offsets(TopicPartition(self.topic, p), timeout=self.timeout_s)[1]
            for p in partitions
        }
        reader.assign([TopicPartition(self.topic, p, 0) for p in partitions])
        self._reader = reader
        pending = {p for p, end in ends.items() if end > 0}
        while pending:
            for message in reader.consume(500, 1.0):
                error = message.error()
                if error is None:
                    self._add(message)
                    if (message.offset() or 0) + 1 >= ends[message.partition() or 0]:
                        pending.discard(message.partition() or 0)
                elif error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(message.partition() or 0)
        self._writer = Producer(self.config.librdkafka_config(**{"enable.idempotence": True, "acks": "all"}))
        log_event(logger, logging.INFO, "notified ids loaded", topic=self.topic, ids=len(self._ids))

    def refresh(self) -> None:
        """Read what other replicas wrote since (non-blocking)."""
        reader = self._reader
        if reader is None:
            return
        with self._lock:
            for message in reader.consume(500, 0):
                if message.error() is None:
                    self._add(message)

    def record(self, event_id: str) -> None:
        """Write ``event_id`` and wait for the acknowledgement (before the caller commits its offset)."""
        writer = self._writer
        if writer is None:
            raise PublishError(f"{self.topic}: NotifiedLog.start() was not called")
        failures: list[str] = []

        def on_delivery(error: KafkaError | None, _message: object) -> None:
            if error is not None:
                failures.append(error.str())

        writer.produce(self.topic, key=event_id.encode(), value=b"notified", on_delivery=on_delivery)
        if writer.flush(self.timeout_s) or failures:
            raise PublishError(f"{self.topic}: notified id not acknowledged: {failures or 'timeout'}")
        self._ids.add(event_id)

    def stop(self) -> None:
        if self._writer is not None:
            self._writer.flush(self.timeout_s)
            self._writer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _add(self, message: object) -> None:
        key = message.key()  # type: ignore[attr-defined]
        if key:
            self._ids.add(key.decode() if isinstance(key, bytes) else str(key))

    def _ensure_topic(self) -> None:
        spec = TopicSpec(
            self.topic,
            partitions=1,
            replication_factor=self.replication_factor,
            config={"cleanup.policy": "compact,delete", "retention.ms": str(self.retention_ms)},
            description="ids of the events this consumer group has notified (compacted)",
        )
        create_topics(self.config, [spec], timeout=self.timeout_s)  # idempotent; waits for the leader
