"""Read an exact Kafka offset range and land it in DuckDB, effectively once.

No Dagster here: the ingest assets call ``ingest_ranges`` inside the single
DuckDB writer slot. The landed offsets in ``ops.ingested_offsets`` are the
truth: a planned range is re-anchored to them before reading, each chunk lands
with its offsets in ONE transaction, and only then are the offsets committed
to the Kafka group (so lag tools see the pipeline). A crash anywhere therefore
neither loses nor duplicates an event.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field

import duckdb
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from chipq_pipelines.defs.ingest.client_errors import ClientErrors
from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.ingest.decode import KafkaRecord, decode_chunk, executor_for
from chipq_pipelines.warehouse.landing import land_prepared, landed_offsets, pending_partitions
from chipq_pipelines.warehouse.prepare import PreparedBatch
from chipq_pipelines.warehouse.types import LandingResult, ValidationBounds

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

    def add(self, result: LandingResult) -> None:
        self.inserted += result.inserted
        self.duplicates += result.duplicates
        self.rejected += result.rejected
        self.offsets.update(result.offsets)
        self.touched_event_dates |= set(result.touched_event_dates)
        self.touched_lot_ids |= set(result.touched_lot_ids)
        self.chunks += 1


def _fault(point: str) -> None:
    if os.environ.get(FAULT_ENV) == point:
        log.error("fault injection: exiting hard at %s", point)
        os._exit(137)


class RangeReadError(RuntimeError):
    """The planned offsets could not be read (broker gone, data deleted)."""


def ingest_ranges(
    kafka: KafkaConfig,
    conn: duckdb.DuckDBPyConnection,
    topic: str,
    planned: Mapping[int, tuple[int, int]],
    *,
    chunk_size: int = 10_000,
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
    summary = IngestSummary(topic=topic, planned=dict(planned))
    landed = landed_offsets(conn, topic)
    client_errors = ClientErrors()
    consumer = Consumer(
        kafka.librdkafka_config(
            **{
                "error_cb": client_errors,
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
                "fetch.max.bytes": 52428800,
            }
        )
    )
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
                chunk_size,
                chunk_bytes,
                bounds,
                stall_timeout_s,
                progress,
                client_errors,
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
    """The partition's low watermark, asked in short tries so that a refused password shows within seconds."""
    deadline = time.monotonic() + 10.0
    while True:
        try:
            low, _ = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=1.0)
            return int(low)
        except KafkaException as exc:
            consumer.poll(0.2)  # serves error_cb
            client_errors.raise_if_authentication_failed(exc)
            if time.monotonic() > deadline:
                raise


def _read_and_land(
    consumer: Consumer,
    kafka: KafkaConfig,
    conn: duckdb.DuckDBPyConnection,
    topic: str,
    todo: dict[int, tuple[int, int]],
    summary: IngestSummary,
    chunk_size: int,
    chunk_bytes: int,
    bounds: ValidationBounds | None,
    stall_timeout_s: float,
    progress: Callable[[IngestSummary], None] | None,
    client_errors: ClientErrors,
) -> None:
    """Consume the ranges in chunks (at most ``chunk_size`` records or ``chunk_bytes`` bytes each).

    Chunks are decoded by ``ChunkDecoder``'s workers while the writer lands earlier
    ones; each lands in order, with its offsets, in one transaction.
    """
    consumer.assign(
        [TopicPartition(topic, p, start if start > 0 else OFFSET_BEGINNING) for p, (start, _) in todo.items()]
    )
    executor, in_flight_max = executor_for(kafka, sum(end - start for start, end in todo.values()))
    chunk_start = {p: start for p, (start, _) in todo.items()}
    next_offset = dict(chunk_start)
    remaining = {p for p, (start, end) in todo.items() if start < end}
    records: list[KafkaRecord] = []
    records_bytes = 0
    in_flight: deque[tuple[dict[int, tuple[int, int]], Future[PreparedBatch]]] = deque()
    last_progress = time.monotonic()

    def land_oldest() -> None:
        ranges, decoded = in_flight.popleft()
        batch = decoded.result()
        _fault("before_landing")
        result = land_prepared(conn, topic=topic, offset_ranges=ranges, batch=batch)
        summary.add(result)
        _fault("after_landing")
        _commit_to_group(consumer, topic, summary)
        if progress:
            progress(summary)

    def seal_chunk() -> None:
        nonlocal records, records_bytes
        ranges = {p: (chunk_start[p], next_offset[p]) for p in chunk_start if next_offset[p] > chunk_start[p]}
        if not ranges:
            return
        ingested_at = dt.datetime.now(dt.UTC)
        in_flight.append((ranges, executor.submit(decode_chunk, kafka, topic, records, bounds, ingested_at)))
        for p in ranges:
            chunk_start[p] = next_offset[p]
        records, records_bytes = [], 0
        while len(in_flight) > in_flight_max:
            land_oldest()

    while remaining:
        messages = consumer.consume(num_messages=min(chunk_size, 5000), timeout=1.0)
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise RangeReadError(f"reading {topic}: {error}")
            partition, offset = message.partition(), message.offset()
            if partition not in remaining or offset < next_offset[partition]:
                continue
            end = todo[partition][1]
            if offset >= end:
                _finish(consumer, topic, partition, end, next_offset, remaining)
                continue
            if offset > next_offset[partition]:
                gap = f"partition {partition}: offsets {next_offset[partition]}..{offset - 1} are gone (retention?)"
                summary.warnings.append(gap)
                log.warning("%s", gap)
            next_offset[partition] = offset + 1
            summary.records += 1
            value, key = message.value(), message.key()
            records.append(KafkaRecord(partition, offset, key, message.timestamp()[1], value))
            records_bytes += len(value or b"") + len(key or b"")
            if offset + 1 >= end:
                _finish(consumer, topic, partition, end, next_offset, remaining)
            if len(records) >= chunk_size or records_bytes >= chunk_bytes:
                seal_chunk()
        if messages:
            last_progress = time.monotonic()
        elif remaining:
            client_errors.raise_if_authentication_failed()
            # Offsets with no record (transaction markers) end a range without a message.
            for partition in list(remaining):
                position = consumer.position([TopicPartition(topic, partition)])[0].offset
                if position >= todo[partition][1]:
                    _finish(consumer, topic, partition, todo[partition][1], next_offset, remaining)
            if remaining and time.monotonic() - last_progress > stall_timeout_s:
                stuck = {p: (next_offset[p], todo[p][1]) for p in remaining}
                raise RangeReadError(
                    f"no records from {topic} for {stall_timeout_s:.0f} s while offsets {stuck} were still due; "
                    "is the broker up? The run can be retried: it re-reads from the landed offsets."
                )
    seal_chunk()
    while in_flight:
        land_oldest()


def _finish(
    consumer: Consumer, topic: str, partition: int, end: int, next_offset: dict[int, int], remaining: set[int]
) -> None:
    next_offset[partition] = max(next_offset[partition], end)
    remaining.discard(partition)
    consumer.pause([TopicPartition(topic, partition)])


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
