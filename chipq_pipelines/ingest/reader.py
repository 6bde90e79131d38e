"""Read an exact Kafka offset range and land it in DuckDB, effectively once.

No Dagster here: the ingest assets call ``ingest_ranges`` inside the single
DuckDB writer slot. The landed offsets in ``ops.ingested_offsets`` are the
truth: a planned range is re-anchored to them before reading, each chunk lands
with its offsets in ONE transaction, and only then are the offsets committed
to the Kafka group (so lag tools see the pipeline). A crash anywhere therefore
neither loses nor duplicates an event.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import duckdb
from confluent_kafka import Consumer, KafkaException, TopicPartition

from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.ingest.client_errors import ClientErrors
from chipq_pipelines.ingest.decode import (
    consumer_config,
    parallel_chunks,
    read_chunks,
    worker_count,
)
from chipq_pipelines.ingest.failover import watermark_offsets
from chipq_pipelines.warehouse.landing import land_prepared, landed_offsets, pending_partitions
from chipq_pipelines.warehouse.types import LandingResult, OffsetGap, ValidationBounds

#: The consumer group whose committed offsets mirror what DuckDB has landed.
PIPELINE_GROUP = "chipq-dagster"
#: Fault injection for the reliability tests: exit hard at this point of a run.
FAULT_ENV = "CHIPQ_FAULT_INJECT"

log = logging.getLogger(__name__)


@dataclass
class IngestSummary:
    """What one ingest run did, for run metadata and the partition sensor."""

    topic: str
    planned: dict[int, tuple[int, int]]
    read: dict[int, tuple[int, int]] = field(default_factory=dict)
    records: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejected: int = 0
    chunks: int = 0
    offsets: dict[int, int] = field(default_factory=dict)
    touched_event_dates: set[dt.date] = field(default_factory=set)
    touched_lot_ids: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    #: offsets deleted from Kafka before they were read, recorded in ops.offset_gaps
    gaps: list[OffsetGap] = field(default_factory=list)

    def add(self, result: LandingResult) -> None:
        self.inserted += result.inserted
        self.duplicates += result.duplicates
        self.rejected += result.rejected
        self.offsets.update(result.offsets)
        self.touched_event_dates |= set(result.touched_event_dates)
        self.touched_lot_ids |= set(result.touched_lot_ids)
        self.gaps.extend(result.gaps)
        self.chunks += 1


def _fault(point: str) -> None:
    if os.environ.get(FAULT_ENV) == point:
        log.error("fault injection: exiting hard at %s", point)
        os._exit(137)


def ingest_ranges(
    kafka: KafkaConfig,
    conn: duckdb.DuckDBPyConnection,
    topic: str,
    planned: Mapping[int, tuple[int, int]],
    *,
    chunk_size: int = 50_000,
    chunk_bytes: int = 32 * 1024 * 1024,
    bounds: ValidationBounds | None = None,
    stall_timeout_s: float = 30.0,
    progress: Callable[[IngestSummary], None] | None = None,
    group_id: str = PIPELINE_GROUP,
) -> IngestSummary:
    """Read ``planned`` (partition → [start, end)) from ``topic`` and land it.

    The start of each range is re-anchored to the warehouse's landed offset
    (the truth), so a re-planned or retried range is harmless. Records that
    cannot be decoded go to ``ops.rejected_events`` with their bytes and reason.
    A chunk holds at most ``chunk_size`` records and about ``chunk_bytes`` bytes of
    values; large runs decode chunks in worker processes (``chipq_pipelines.ingest.decode``).
    """
    landed = landed_offsets(conn, topic)
    # Every partition's landed offset is reported (and mirrored to the group), not only the planned ones:
    # the planner uses them when commits to the group failed, and a group left behind catches up here.
    summary = IngestSummary(topic=topic, planned=dict(planned), offsets=dict(landed))
    client_errors = ClientErrors()
    consumer = Consumer(consumer_config(kafka, group_id, client_errors))
    try:
        todo: dict[int, tuple[int, int]] = {}
        for partition, (start, end) in planned.items():
            anchored = landed.get(partition)
            if anchored is None:
                low = _low_watermark(consumer, topic, partition, client_errors)
                anchored = max(low, 0) if start > low else start
            if anchored >= end:
                summary.offsets[partition] = anchored
                continue
            todo[partition] = (anchored, end)
        summary.read = dict(todo)
        if todo:
            _read_and_land(
                consumer,
                kafka,  # decoded with the resource's schema registry, if any
                conn,
                topic,
                todo,
                summary,
                progress,
                client_errors,
                group_id,
                chunk_size=chunk_size,
                chunk_bytes=chunk_bytes,
                bounds=bounds,
                stall_timeout_s=stall_timeout_s,
            )
        _commit_to_group(consumer, topic, summary)
    finally:
        consumer.close()
    # Partitions an earlier run landed but crashed before reporting: report them too.
    pending_days, pending_lots = pending_partitions(conn)
    summary.touched_event_dates |= pending_days
    summary.touched_lot_ids |= pending_lots
    return summary


def _low_watermark(consumer: Consumer, topic: str, partition: int, client_errors: ClientErrors) -> int:
    """The partition's low watermark (through a leader change); a refused password shows within seconds."""

    def refused(exc: KafkaException) -> None:
        consumer.poll(0.2)  # serves error_cb
        client_errors.raise_if_authentication_failed(exc)

    return watermark_offsets(consumer, topic, partition, on_error=refused)[0]


def _read_and_land(
    consumer: Consumer,
    kafka: KafkaConfig,
    conn: duckdb.DuckDBPyConnection,
    topic: str,
    todo: dict[int, tuple[int, int]],
    summary: IngestSummary,
    progress: Callable[[IngestSummary], None] | None,
    client_errors: ClientErrors,
    group_id: str,
    **options: Any,
) -> None:
    """Land the chunks of ``todo`` in order, each with its offsets in one transaction.

    Large runs are read by worker processes, one set of partitions each
    (``parallel_chunks``); small ones by ``consumer`` in this process.
    """
    workers = worker_count(kafka, todo)
    if workers:
        chunks = parallel_chunks(kafka, topic, group_id, todo, workers, **options)
    else:
        chunks = read_chunks(consumer, kafka, topic, todo, client_errors=client_errors, **options)
    # closing: a landing error stops the workers now, not when the traceback is collected
    with contextlib.closing(chunks):
        for chunk in chunks:
            summary.records += chunk.records
            for warning in chunk.warnings:
                summary.warnings.append(warning)
                log.warning("%s", warning)
            _fault("before_landing")
            result = land_prepared(conn, topic=topic, offset_ranges=chunk.ranges, batch=chunk.batch, gaps=chunk.gaps)
            summary.add(result)
            _fault("after_landing")
            _commit_to_group(consumer, topic, summary)
            if progress:
                progress(summary)


def _commit_to_group(consumer: Consumer, topic: str, summary: IngestSummary) -> None:
    """Mirror the landed offsets into the Kafka group; DuckDB stays the truth."""
    offsets = [TopicPartition(topic, p, o) for p, o in summary.offsets.items() if o > 0]
    if not offsets:
        return
    try:
        consumer.commit(offsets=offsets, asynchronous=False)
    except KafkaException as exc:
        note = f"landed offsets not mirrored to the pipeline group ({exc}); the next run re-commits them"
        summary.warnings.append(note)
        log.warning("%s", note)
