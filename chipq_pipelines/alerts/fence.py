"""The topic fence: alerts wait until the warehouse has landed what Kafka held when it could not know its alerts.

chipq's own alert events on the quality topic are the truth about what was already
published (``lifecycle.import_from_topic`` reads them from ``raw.quality_events``). Two
moments leave some of them possibly beyond what is landed:

- a warehouse's first evaluation (it may replace one whose alerts are on the topic: a
  rebuild from Kafka), which also needs the whole inspection topic so that it judges
  final marts, not half-landed lots;
- a publish run after one that sent but did not record the acknowledgement (a crash).

At those moments the end offsets are read once and stored (``ops.alert_fence``); alerts are
neither evaluated nor published until ``ops.ingested_offsets`` reaches them. A fence is a
fixed target, not the moving end of a busy topic: landing reaches it in a cycle or two and
alerts then go on. While waiting, runs say so in their metadata; nothing fails.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import duckdb
from confluent_kafka import Consumer

from chipq_pipelines.alerts.sql import load as _sql
from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.ingest.failover import watermark_offsets

EndOffsets = dict[tuple[str, int], int]

FIRST_EVALUATION = "first alert evaluation of this warehouse (a rebuild lands what the topics hold first)"
UNFINISHED_SEND = "a publish run sent events without recording their acknowledgement"


def end_offsets(config: KafkaConfig, topics: Sequence[str], timeout_s: float = 10.0) -> EndOffsets:
    """The high watermark of every partition of ``topics`` (no group is joined)."""
    consumer = Consumer(
        config.librdkafka_config(**{"group.id": f"chipq-alert-fence-{uuid.uuid4().hex}", "enable.auto.commit": False})
    )
    try:
        ends: EndOffsets = {}
        for topic in topics:
            metadata = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
            if metadata.error is not None:
                raise RuntimeError(f"cannot read the partitions of {topic}: {metadata.error}")
            for partition in metadata.partitions:
                # through a leader change: one broker of a cluster dying must not fail the run
                _low, high = watermark_offsets(consumer, topic, partition)
                ends[(topic, partition)] = high
        return ends
    finally:
        consumer.close()


@dataclass(frozen=True)
class TopicFence:
    """The topics alerts depend on and how to read their end offsets."""

    inspection_topic: str
    quality_topic: str
    read_ends: Callable[[Sequence[str]], EndOffsets]

    @classmethod
    def for_kafka(cls, config: KafkaConfig, inspection_topic: str, quality_topic: str) -> TopicFence:
        return cls(inspection_topic, quality_topic, lambda topics: end_offsets(config, topics))

    @property
    def topics(self) -> list[str]:
        return [self.inspection_topic, self.quality_topic]

    def _fenced(self, conn: duckdb.DuckDBPyConnection) -> dict[str, int]:
        rows = conn.execute(_sql("fence_topics"), {"topics": self.topics}).fetchall()
        return {topic: int(covers) for topic, covers in rows}

    def _take(self, conn: duckdb.DuckDBPyConnection, topics: Sequence[str], covers: int, reason: str) -> None:
        for (topic, partition), end in self.read_ends(topics).items():
            params = {"topic": topic, "partition": partition, "end_offset": end, "covers_change_seq": covers}
            conn.execute(_sql("fence_take"), {**params, "reason": reason})

    def before_evaluation(self, conn: duckdb.DuckDBPyConnection) -> list[str]:
        """Take the first fence of this warehouse if there is none; the partitions not landed up to it."""
        fenced = self._fenced(conn)
        missing = [topic for topic in self.topics if topic not in fenced]
        if missing:
            self._take(conn, missing, 0, FIRST_EVALUATION)
        return self.gaps(conn)

    def before_publishing(self, conn: duckdb.DuckDBPyConnection) -> list[str]:
        """A new quality-topic fence after an unfinished send; the partitions not landed up to the fences."""
        ((resent_seq,),) = conn.execute(_sql("outbox_resent_since")).fetchall()
        fenced = self._fenced(conn)
        if self.quality_topic not in fenced or (resent_seq is not None and resent_seq > fenced[self.quality_topic]):
            reason = UNFINISHED_SEND if resent_seq is not None else FIRST_EVALUATION
            self._take(conn, [self.quality_topic], int(resent_seq or 0), reason)
        return self.gaps(conn)

    def gaps(self, conn: duckdb.DuckDBPyConnection) -> list[str]:
        """``topic[partition] landed N of M (reason)`` for each fenced partition not landed up to its fence."""
        rows = conn.execute(_sql("fence_gaps"), {"topics": self.topics}).fetchall()
        return [
            f"{topic}[{partition}] landed {landed} of {end} ({reason})"
            for topic, partition, end, landed, reason in rows
        ]
