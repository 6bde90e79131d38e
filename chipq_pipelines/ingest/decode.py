"""Read exact offset ranges in chunks ready to land, on every core.

Consuming, decoding (fastavro) and building Arrow columns are the CPU-bound part of
ingest, while landing must stay one DuckDB transaction per chunk in the writer
process. ``read_chunks`` is that part for one consumer; ``parallel_chunks`` runs it
in worker processes, each consuming its own Kafka partitions (so the writer does
nothing but land), and hands the writer each worker's chunks in order. A chunk holds
at most ``chunk_size`` records and about ``chunk_bytes`` bytes of values, each worker
builds one at a time, and at most one more per worker waits for the writer: memory
is bounded by bytes, not by the size of the run.

Hand-written because neither confluent-kafka nor DuckDB decodes Avro in parallel;
the processes are the standard library's (``forkserver``: no Kafka client threads
are forked). Code that starts a pipeline run from a script must guard its entry
point with ``if __name__ == "__main__":``, as ``multiprocessing`` requires.
"""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
import os
import pickle
import queue
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from chipq_pipelines.errors import ChipqError
from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.errors import DeserializationError
from chipq_pipelines.events.serialization import latest_reader_decoder
from chipq_pipelines.gc_pause import cyclic_gc_paused
from chipq_pipelines.ingest.client_errors import ClientErrors
from chipq_pipelines.ingest.failover import watermark_offsets
from chipq_pipelines.warehouse.prepare import PreparedBatch, prepare_batch
from chipq_pipelines.warehouse.types import (
    KafkaCoordinates,
    LandedEvent,
    OffsetGap,
    RejectedRecord,
    ValidationBounds,
)

#: Runs smaller than this read in the writer process: starting workers would cost more than it saves.
PARALLEL_MIN_RECORDS = 20_000
#: Environment override of the number of worker processes (0 or 1: read in the writer process).
WORKERS_ENV = "CHIPQ_DECODE_WORKERS"

#: What a chunk keeps of one consumed message: (partition, offset, key, timestamp_ms, value).
#: A plain tuple: one is built per record, and a tuple costs a tenth of a NamedTuple.
KafkaRecord = tuple[int, int, bytes | None, int | None, bytes | None]

log = logging.getLogger(__name__)


class RangeReadError(ChipqError, RuntimeError):
    """The planned offsets could not be read (broker gone, data deleted)."""


@dataclass
class Chunk:
    """Consecutive offsets of some partitions, decoded: lands in one transaction with ``ranges`` as offsets.

    ``gaps``: offsets inside ``ranges`` that Kafka no longer had (they land in the same transaction).
    """

    ranges: dict[int, tuple[int, int]]
    batch: PreparedBatch
    records: int
    warnings: list[str] = field(default_factory=list)
    gaps: list[OffsetGap] = field(default_factory=list)


def consumer_config(kafka: KafkaConfig, group_id: str, client_errors: ClientErrors) -> dict[str, Any]:
    """librdkafka settings of the ingest readers: assign() only, nothing committed automatically."""
    return kafka.librdkafka_config(
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


def decode_chunk(
    kafka: KafkaConfig,
    topic: str,
    records: Sequence[KafkaRecord],
    bounds: ValidationBounds | None,
    ingested_at: dt.datetime,
) -> PreparedBatch:
    """Decode, validate and shape one chunk's records (the cyclic GC paused: no cycles, many dicts)."""
    with cyclic_gc_paused():
        decoder = latest_reader_decoder(kafka)
        inspection: list[LandedEvent] = []
        quality: list[LandedEvent] = []
        rejected: list[RejectedRecord] = []
        for partition, offset, key, timestamp_ms, raw in records:
            try:
                event, ref = decoder.decode(raw)
            except DeserializationError as exc:
                rejected.append(RejectedRecord(topic, partition, offset, key, raw or b"", exc.reason))
                continue
            coordinates = KafkaCoordinates(topic, partition, offset, key, timestamp_ms, raw)
            (quality if ref.name == "quality" else inspection).append((event, coordinates))
        return prepare_batch(inspection, quality, rejected, bounds=bounds, ingested_at=ingested_at, schema_checked=True)


def _finish(
    consumer: Consumer, topic: str, partition: int, end: int, next_offset: dict[int, int], remaining: set[int]
) -> None:
    next_offset[partition] = max(next_offset[partition], end)
    remaining.discard(partition)
    consumer.pause([TopicPartition(topic, partition)])


def read_chunks(
    consumer: Consumer,
    kafka: KafkaConfig,
    topic: str,
    todo: Mapping[int, tuple[int, int]],
    *,
    chunk_size: int,
    chunk_bytes: int,
    bounds: ValidationBounds | None,
    stall_timeout_s: float,
    client_errors: ClientErrors,
) -> Iterator[Chunk]:
    """Consume ``todo`` (partition → [start, end)) with ``consumer`` and yield decoded chunks, in offset order.

    Offsets that are not returned are either gone (deleted by retention or ``delete_records``
    before they were read) or never held a record (transaction markers, compacted away). Only
    the part below the partition's low watermark is gone: that part is recorded as a gap of the
    chunk, the rest is passed over silently, as every Kafka consumer does.
    """
    gaps: list[OffsetGap] = []
    warnings: list[str] = []

    def skipped(partition: int, first: int, stop: int, low: int | None = None) -> None:
        """Offsets [first, stop) of ``partition`` were not returned: record the part that was deleted."""
        if low is None:
            # The low watermark of the fetch that jumped (librdkafka keeps each fetch's log start offset).
            low = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)[0]
            if low < 0:
                low = watermark_offsets(consumer, topic, partition)[0]
        if low > first:
            gap = OffsetGap(partition, first, min(stop, low) - 1)
            gaps.append(gap)
            warnings.append(str(gap))
            log.warning("%s: %s", topic, gap)

    chunk_start = {p: start for p, (start, _) in todo.items()}
    next_offset = dict(chunk_start)
    ends = {p: end for p, (_, end) in todo.items()}
    remaining = {p for p, (start, end) in todo.items() if start < end}
    for partition in sorted(remaining):
        start = next_offset[partition]
        if start > 0:  # records deleted before this run are found here, not left to the offset reset
            low, _ = watermark_offsets(consumer, topic, partition)
            if low > start:
                skipped(partition, start, ends[partition], low)
                next_offset[partition] = min(low, ends[partition])
    consumer.assign(
        [TopicPartition(topic, p, next_offset[p] if next_offset[p] > 0 else OFFSET_BEGINNING) for p in todo]
    )
    for partition in sorted(remaining):
        if next_offset[partition] >= ends[partition]:
            _finish(consumer, topic, partition, ends[partition], next_offset, remaining)
    records: list[KafkaRecord] = []
    records_bytes = 0
    last_progress = time.monotonic()

    def seal() -> Chunk | None:
        nonlocal records, records_bytes, warnings, gaps
        ranges = {p: (chunk_start[p], next_offset[p]) for p in chunk_start if next_offset[p] > chunk_start[p]}
        if not ranges:
            return None
        batch = decode_chunk(kafka, topic, records, bounds, dt.datetime.now(dt.UTC))
        chunk = Chunk(ranges, batch, len(records), warnings, gaps)
        for p in ranges:
            chunk_start[p] = next_offset[p]
        records, records_bytes, warnings, gaps = [], 0, [], []
        return chunk

    while remaining:
        # Ask for no more than is still due: consume() returns once it has that many, instead of
        # waiting out its timeout for records that are not there (a small range would take 1 s).
        due = sum(ends[p] - next_offset[p] for p in remaining)
        messages = consumer.consume(num_messages=max(1, min(chunk_size, 10_000, due)), timeout=1.0)
        for message in messages:
            if message.error() is not None:
                error = message.error()
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise RangeReadError(f"reading {topic}: {error}")
            partition, offset = message.partition(), message.offset()
            expected = next_offset.get(partition)
            if expected is None or offset < expected or partition not in remaining:
                continue
            end = ends[partition]
            if offset > expected:
                skipped(partition, expected, min(offset, end))
            if offset >= end:
                _finish(consumer, topic, partition, end, next_offset, remaining)
                continue
            next_offset[partition] = offset + 1
            value = message.value()
            records.append((partition, offset, message.key(), message.timestamp()[1], value))
            if value:
                records_bytes += len(value)
            if offset + 1 >= end:
                _finish(consumer, topic, partition, end, next_offset, remaining)
            if len(records) >= chunk_size or records_bytes >= chunk_bytes:
                chunk = seal()
                if chunk:
                    yield chunk
        if messages:
            last_progress = time.monotonic()
        elif remaining:
            client_errors.raise_if_authentication_failed()
            # Offsets with no record (transaction markers) end a range without a message.
            for partition in list(remaining):
                position = consumer.position([TopicPartition(topic, partition)])[0].offset
                if position >= ends[partition]:
                    if next_offset[partition] < ends[partition]:
                        skipped(partition, next_offset[partition], ends[partition])
                    _finish(consumer, topic, partition, ends[partition], next_offset, remaining)
            if remaining and time.monotonic() - last_progress > stall_timeout_s:
                stuck = {p: (next_offset[p], ends[p]) for p in remaining}
                raise RangeReadError(
                    f"no records from {topic} for {stall_timeout_s:.0f} s while offsets {stuck} were still due; "
                    "is the broker up? The run can be retried: it re-reads from the landed offsets."
                )
    chunk = seal()
    if chunk:
        yield chunk


# ------------------------------------------------------------------ worker processes


def decode_workers() -> int:
    """Worker processes to read with: ``$CHIPQ_DECODE_WORKERS``, else one per core plus one (1 means none).

    One more than the cores: the writer mostly waits for chunks, and with few Kafka
    partitions (3 on 2 cores) one worker per partition keeps the shares even.
    """
    configured = os.environ.get(WORKERS_ENV, "").strip()
    if configured:
        return max(0, int(configured))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores + 1 if cores > 1 else 1


def worker_count(kafka: KafkaConfig, todo: Mapping[int, tuple[int, int]]) -> int:
    """How many worker processes should read ``todo`` (0: read in this process)."""
    workers = min(decode_workers(), len(todo))
    planned = sum(end - start for start, end in todo.values())
    in_process_registry = (kafka.schema_registry_url or "").startswith("mock://")  # its store is per process
    if workers <= 1 or planned < PARALLEL_MIN_RECORDS or in_process_registry:
        return 0
    return workers


def _split(todo: Mapping[int, tuple[int, int]], workers: int) -> list[dict[int, tuple[int, int]]]:
    """Partitions dealt to workers, largest ranges first, each to the least loaded worker."""
    shares: list[dict[int, tuple[int, int]]] = [{} for _ in range(workers)]
    loads = [0] * workers
    for partition, (start, end) in sorted(todo.items(), key=lambda item: item[1][0] - item[1][1]):
        least = loads.index(min(loads))
        shares[least][partition] = (start, end)
        loads[least] += end - start
    return [share for share in shares if share]


def _put(out: Any, item: tuple[str, int, Any]) -> None:
    """Send ``item`` to the writer; exit if the writer is gone (killed: nobody will ever read it)."""
    parent = multiprocessing.parent_process()
    while True:
        try:
            out.put(item, timeout=1.0)
            return
        except queue.Full:
            if parent is not None and not parent.is_alive():
                os._exit(1)


def _worker(
    worker_id: int,
    out: Any,
    kafka: KafkaConfig,
    topic: str,
    group_id: str,
    todo: dict[int, tuple[int, int]],
    options: dict[str, Any],
) -> None:
    """A worker process: read its partitions, send each chunk, then ``done`` (or the error)."""
    client_errors = ClientErrors()
    consumer = Consumer(consumer_config(kafka, group_id, client_errors))
    try:
        for chunk in read_chunks(consumer, kafka, topic, todo, client_errors=client_errors, **options):
            _put(out, ("chunk", worker_id, chunk))
        _put(out, ("done", worker_id, None))
    except BaseException as exc:
        try:
            pickle.dumps(exc)
        except Exception:  # an exception that does not pickle still says what happened
            exc = RangeReadError(f"{type(exc).__name__}: {exc}")
        _put(out, ("error", worker_id, exc))
    finally:
        consumer.close()


def parallel_chunks(
    kafka: KafkaConfig,
    topic: str,
    group_id: str,
    todo: Mapping[int, tuple[int, int]],
    workers: int,
    **options: Any,
) -> Iterator[Chunk]:
    """Yield the chunks of ``todo`` read by ``workers`` processes; each partition's chunks arrive in order.

    A worker's error is raised here; a worker that dies without a word (killed, out of
    memory) fails the read. Workers still running when the caller stops are terminated.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    shares = _split(todo, workers)
    out = context.Queue(maxsize=len(shares) + 1)  # the memory bound: decoded chunks waiting for the writer
    processes = [
        context.Process(
            target=_worker,
            args=(worker_id, out, kafka, topic, group_id, share, options),
            name=f"chipq-ingest-{topic}-{worker_id}",
            daemon=True,
        )
        for worker_id, share in enumerate(shares)
    ]
    for process in processes:
        process.start()
    running = set(range(len(processes)))
    try:
        while running:
            try:
                kind, worker_id, payload = out.get(timeout=1.0)
            except queue.Empty:
                for worker_id in list(running):
                    exitcode = processes[worker_id].exitcode
                    if exitcode is not None and out.empty():
                        raise RangeReadError(
                            f"ingest worker {worker_id} for {topic} exited with code {exitcode} without finishing; "
                            "the run can be retried: it re-reads from the landed offsets"
                        ) from None
                continue
            if kind == "chunk":
                yield payload
            elif kind == "done":
                running.discard(worker_id)
            else:
                raise payload
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=10)
        out.close()
        out.cancel_join_thread()
