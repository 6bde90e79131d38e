"""Offset planning from Kafka watermarks: no group join, no DuckDB, bounded time."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from confluent_kafka import Consumer, KafkaException, TopicPartition

from chipq_pipelines.errors import ChipqError
from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.ingest.client_errors import ClientErrors, KafkaAuthenticationError
from chipq_pipelines.ingest.failover import committed_offsets, watermark_offsets
from chipq_pipelines.ingest.reader import PIPELINE_GROUP

#: Seconds any single metadata call of a sensor tick may take.
CALL_TIMEOUT_S = 5.0


__all__ = ["KafkaAuthenticationError", "TopicNotReady", "cap_ranges", "plan_ranges", "rewind_group"]


class TopicNotReady(ChipqError, RuntimeError):
    """The topic does not exist (yet) or has no partitions."""


def plan_ranges(
    kafka: KafkaConfig,
    topic: str,
    max_records: int,
    group_id: str = PIPELINE_GROUP,
    *,
    use_committed: bool = True,
    after: Mapping[int, int] | None = None,
    landed: Mapping[int, int] | None = None,
) -> dict[int, tuple[int, int]]:
    """partition → [start, end) of offsets not yet landed, at most ``max_records`` in all.

    Starts at the offsets the ingest runs committed to the ``chipq-dagster``
    group (a lower bound of what DuckDB holds: runs commit after landing), even
    when retention has deleted them since (ingest then records the gap), or at
    the low watermark for a partition never committed. With
    ``use_committed=False`` (no warehouse file: it was deleted or never
    made) every partition starts at its low watermark, since the group's
    offsets mirror a warehouse that is gone. ``after`` (partition → offset) starts
    the plan there instead, when later: the end of a run that is still in flight,
    so that the next one can wait in the queue (if that run fails, the next one
    reads from the landed offsets anyway: a reader re-anchors every range).
    ``landed`` (partition → next offset, as the last ingest reported it) starts the
    plan there when the group is behind: if offset commits keep failing, the group
    never moves, and planning from it alone would plan the same landed range forever.
    """
    backlog: dict[int, tuple[int, int]] = {}
    with _group_client(kafka, group_id) as consumer:
        for partition, committed, low, high in _offsets(consumer, topic):
            # Not raised to the low watermark: offsets deleted since they were committed are planned, so
            # that ingest reaches them and records the gap (ops.offset_gaps) instead of skipping it unseen.
            known = committed if use_committed and committed >= 0 else low
            if use_committed and landed:
                known = max(known, landed.get(partition, 0))
            start = max(known, (after or {}).get(partition, 0))
            if high > start:
                backlog[partition] = (start, high)
    return cap_ranges(backlog, max_records)


def rewind_group(kafka: KafkaConfig, group_id: str, topics: list[str]) -> dict[str, dict[int, int]]:
    """Move the group's committed offsets of ``topics`` back to the low watermarks: topic → {partition: offset}.

    For a new, empty warehouse: the group mirrors what the warehouse landed,
    so offsets committed for a warehouse that is gone would make the planner
    skip everything it holds. Partitions never committed are left alone.
    """
    rewound: dict[str, dict[int, int]] = {}
    with _group_client(kafka, group_id) as consumer:
        for topic in topics:
            try:
                offsets = _offsets(consumer, topic)
            except TopicNotReady:
                continue
            rewind = [TopicPartition(topic, p, low) for p, committed, low, _ in offsets if committed > low]
            if rewind:
                consumer.commit(offsets=rewind, asynchronous=False)
                rewound[topic] = {tp.partition: tp.offset for tp in rewind}
    return rewound


@contextmanager
def _group_client(kafka: KafkaConfig, group_id: str) -> Iterator[Consumer]:
    """A client of the pipeline group that never joins it; a refused password raises KafkaAuthenticationError."""
    client_errors = ClientErrors()
    consumer = Consumer(
        kafka.librdkafka_config(
            **{"group.id": group_id, "enable.auto.commit": False, "log_level": 3, "error_cb": client_errors}
        )
    )
    try:
        yield consumer
    except KafkaException as exc:
        consumer.poll(0.5)  # serves the client-level error callbacks (authentication failures come there)
        client_errors.raise_if_authentication_failed(exc)
        raise
    finally:
        consumer.close()


def _offsets(consumer: Consumer, topic: str) -> list[tuple[int, int, int, int]]:
    """(partition, committed offset or -1, low watermark, high watermark) of every partition of ``topic``."""
    info = consumer.list_topics(topic, timeout=CALL_TIMEOUT_S).topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        reason = info.error if info is not None and info.error is not None else "no partitions"
        raise TopicNotReady(f"topic {topic} is not available: {reason}")
    offsets = []
    # Both ride out a leader or coordinator change (a new cluster also creates __consumer_offsets on first use).
    for tp in committed_offsets(consumer, [TopicPartition(topic, p) for p in sorted(info.partitions)]):
        low, high = watermark_offsets(consumer, topic, tp.partition)
        offsets.append((tp.partition, tp.offset, low, high))
    return offsets


def cap_ranges(backlog: dict[int, tuple[int, int]], max_records: int) -> dict[int, tuple[int, int]]:
    """Shorten the ranges so they hold at most ``max_records``, shared fairly across partitions."""
    capped: dict[int, tuple[int, int]] = {}
    budget = max_records
    open_partitions = sorted(backlog, key=lambda p: backlog[p][1] - backlog[p][0])
    for index, partition in enumerate(open_partitions):
        start, end = backlog[partition]
        share = budget // (len(open_partitions) - index)
        take = min(end - start, share)
        if take > 0:
            capped[partition] = (start, start + take)
            budget -= take
    return capped
