"""What ``chipq metrics`` reads: Kafka's watermarks and the pipeline group's offsets, and the analysts' view.

Each read is bounded: a handful of metadata and offset requests with timeouts, and
a few aggregate queries on the read-only snapshot whose cost does not grow with
history (row counts, and the small operational tables). The writer's warehouse
file is never opened.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.topics import INSPECTION_TOPIC, QUALITY_TOPIC, dlq_topic
from chipq_pipelines.ingest.reader import PIPELINE_GROUP
from chipq_pipelines.metrics.sql import load
from chipq_pipelines.paths import ChipqHome
from chipq_pipelines.warehouse.reader_limits import ReaderLimits
from chipq_pipelines.warehouse.snapshot import open_snapshot

#: Longest one Kafka request of a scrape may take.
KAFKA_TIMEOUT_S = 3.0
#: The metrics' queries are aggregates over row counts and small tables: a small reader.
SNAPSHOT_LIMITS = ReaderLimits(memory_limit="256MB", max_temp_directory_size="256MB")


@dataclass(frozen=True)
class PipelineTargets:
    """The pipeline whose health is read: its topics, its consumer group and its analysts' view."""

    inspection_topic: str = INSPECTION_TOPIC
    quality_topic: str = QUALITY_TOPIC
    group: str = PIPELINE_GROUP
    snapshot_path: Path = field(default_factory=lambda: ChipqHome.from_env().analyst_snapshot)

    @classmethod
    def from_env(cls) -> PipelineTargets:
        """``CHIPQ_INSPECTION_TOPIC``, ``CHIPQ_QUALITY_TOPIC``, ``CHIPQ_PIPELINE_GROUP``, ``CHIPQ_ANALYST_SNAPSHOT``
        (else ``$CHIPQ_HOME/analytics.duckdb``); unset or blank ones keep the platform's defaults."""

        def env(name: str) -> str | None:
            return os.environ.get(name, "").strip() or None

        snapshot = env("CHIPQ_ANALYST_SNAPSHOT")
        return cls(
            inspection_topic=env("CHIPQ_INSPECTION_TOPIC") or INSPECTION_TOPIC,
            quality_topic=env("CHIPQ_QUALITY_TOPIC") or QUALITY_TOPIC,
            group=env("CHIPQ_PIPELINE_GROUP") or PIPELINE_GROUP,
            snapshot_path=Path(snapshot) if snapshot else ChipqHome.from_env().analyst_snapshot,
        )

    @property
    def topics(self) -> tuple[str, str]:
        return (self.inspection_topic, self.quality_topic)


# ---------------------------------------------------------------- Kafka


@dataclass(frozen=True)
class PartitionOffsets:
    """One partition of an event topic: its watermarks and the pipeline group's committed offset."""

    topic: str
    partition: int
    low: int
    high: int
    committed: int | None  # None: the group never committed this partition

    @property
    def lag(self) -> int:
        """Records the pipeline has not consumed: from the committed offset (else the low watermark) to the end."""
        position = max(self.committed if self.committed is not None else self.low, self.low)
        return max(self.high - position, 0)


@dataclass(frozen=True)
class KafkaReading:
    partitions: list[PartitionOffsets]
    #: Source topic -> records held in its dead-letter topic (high - low over its partitions); absent: no DLQ topic.
    dlq_records: dict[str, int]
    #: Event topics the cluster does not have.
    missing_topics: list[str]


class KafkaReader:
    """Reads watermarks and committed offsets with one long-lived consumer that never joins the group."""

    def __init__(self, config: KafkaConfig, group: str) -> None:
        self._config = config
        self._group = group
        self._consumer: Consumer | None = None
        self._lock = threading.Lock()

    def _client(self) -> Consumer:
        if self._consumer is None:
            # group.id only names the group whose committed offsets are read; nothing subscribes or commits.
            # librdkafka's own connection errors stay quiet: a failed read is logged once and shows as
            # chipq_metrics_source_up{source="kafka"} 0.
            self._consumer = Consumer(
                self._config.librdkafka_config(**{"group.id": self._group, "enable.auto.commit": False, "log_level": 2})
            )
        return self._consumer

    def read(self, topics: Sequence[str]) -> KafkaReading:
        with self._lock:
            consumer = self._client()
            metadata = consumer.list_topics(timeout=KAFKA_TIMEOUT_S).topics
            partitions: list[PartitionOffsets] = []
            missing = []
            for topic in topics:
                info = metadata.get(topic)
                if info is None or info.error is not None:
                    missing.append(topic)
                    continue
                tps = [TopicPartition(topic, p) for p in sorted(info.partitions)]
                committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=KAFKA_TIMEOUT_S)}
                for tp in tps:
                    low, high = consumer.get_watermark_offsets(tp, timeout=KAFKA_TIMEOUT_S, cached=False)
                    offset = committed.get(tp.partition, -1)
                    partitions.append(PartitionOffsets(topic, tp.partition, low, high, offset if offset >= 0 else None))
            dlq_records = {}
            for topic in topics:
                info = metadata.get(dlq_topic(topic))
                if info is None or info.error is not None:
                    continue
                total = 0
                for partition in info.partitions:
                    low, high = consumer.get_watermark_offsets(
                        TopicPartition(dlq_topic(topic), partition), timeout=KAFKA_TIMEOUT_S, cached=False
                    )
                    total += max(high - low, 0)
                dlq_records[topic] = total
            return KafkaReading(partitions, dlq_records, missing)

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None


# ---------------------------------------------------------------- the analysts' view


@dataclass(frozen=True)
class AlertCount:
    event_type: str
    level: str
    published: int
    unpublished: int


@dataclass(frozen=True)
class SnapshotReading:
    published_at: dt.datetime
    #: topic -> rows in its raw table
    landed: dict[str, int]
    #: topic -> rows in ops.rejected_events
    rejected: dict[str, int]
    alerts: list[AlertCount]
    #: topic -> unacknowledged records in ops.offset_gaps
    gap_records: dict[str, int]
    #: (topic, partition) -> next offset the warehouse reads, as of this view
    landed_offsets: dict[tuple[str, int], int]


def read_snapshot(targets: PipelineTargets) -> SnapshotReading | None:
    """The figures of the analysts' view, or None when there is none yet (FileNotFoundError is not raised)."""
    if not targets.snapshot_path.is_file():
        return None
    conn = open_snapshot(targets.snapshot_path, limits=SNAPSHOT_LIMITS)
    try:
        ((published_at,),) = conn.execute(load("snapshot_published")).fetchall()
        ((inspection, quality),) = conn.execute(load("events_landed")).fetchall()
        rejected = {str(topic): int(n) for topic, n in conn.execute(load("events_rejected")).fetchall()}
        alerts = [
            AlertCount(str(event_type), str(level), int(published), int(unpublished))
            for event_type, level, published, unpublished in conn.execute(load("alerts_by_level")).fetchall()
        ]
        gaps = {str(topic): int(n) for topic, n in conn.execute(load("offset_gaps_unacknowledged")).fetchall()}
        offsets = {(str(t), int(p)): int(o) for t, p, o in conn.execute(load("landed_offsets")).fetchall()}
    finally:
        conn.close()
    return SnapshotReading(
        published_at=published_at,
        landed={targets.inspection_topic: int(inspection), targets.quality_topic: int(quality)},
        rejected=rejected,
        alerts=alerts,
        gap_records=gaps,
        landed_offsets=offsets,
    )
