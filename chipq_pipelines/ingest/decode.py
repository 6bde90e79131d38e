"""Decode chunks of Kafka records into landing-ready batches, on every core.

Decoding (fastavro) and building Arrow columns are the CPU-bound half of ingest,
while landing must stay one DuckDB transaction per chunk in the writer process.
``ChunkDecoder`` runs the first half in worker processes (a ``forkserver`` pool,
so no Kafka client threads are forked) and hands the writer the chunks in order.
Hand-written because neither confluent-kafka nor DuckDB decodes Avro in
parallel; the pool itself is the standard library's ``ProcessPoolExecutor``.
"""

from __future__ import annotations

import atexit
import datetime as dt
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import NamedTuple

from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.errors import DeserializationError
from chipq_pipelines.events.serialization import latest_reader_decoder
from chipq_pipelines.warehouse.prepare import PreparedBatch, prepare_batch
from chipq_pipelines.warehouse.types import KafkaCoordinates, LandedEvent, RejectedRecord, ValidationBounds

#: Runs smaller than this decode in the writer process: starting workers would cost more than it saves.
PARALLEL_MIN_RECORDS = 20_000
#: Environment override of the number of decode workers (0 or 1: decode in the writer process).
WORKERS_ENV = "CHIPQ_DECODE_WORKERS"


class KafkaRecord(NamedTuple):
    """What a chunk keeps of one consumed message: coordinates and bytes."""

    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int | None
    value: bytes | None


def decode_chunk(
    kafka: KafkaConfig,
    topic: str,
    records: Sequence[KafkaRecord],
    bounds: ValidationBounds | None,
    ingested_at: dt.datetime,
) -> PreparedBatch:
    """Decode, validate and shape one chunk (runs in a worker process or inline)."""
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
    return prepare_batch(inspection, quality, rejected, bounds=bounds, ingested_at=ingested_at)


class _Inline(Executor):
    """Runs each submitted call at once in this process (same interface as a pool)."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


_pool: ProcessPoolExecutor | None = None


def decode_workers() -> int:
    """Worker processes to decode with: ``$CHIPQ_DECODE_WORKERS``, else one per core (1 means inline)."""
    configured = os.environ.get(WORKERS_ENV, "").strip()
    if configured:
        return max(0, int(configured))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _shared_pool(workers: int) -> ProcessPoolExecutor:
    """One pool per process, started on first use and reused by later runs (catch-up, --follow)."""
    global _pool
    if _pool is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["chipq_pipelines.ingest.decode"])
        _pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
        atexit.register(_pool.shutdown, wait=False, cancel_futures=True)
    return _pool


def executor_for(kafka: KafkaConfig, planned_records: int) -> tuple[Executor, int]:
    """The executor for a run of ``planned_records`` and how many chunks it decodes at once."""
    workers = decode_workers()
    in_process_registry = (kafka.schema_registry_url or "").startswith("mock://")  # its store is per process
    if workers <= 1 or planned_records < PARALLEL_MIN_RECORDS or in_process_registry:
        return _Inline(), 1
    return _shared_pool(workers), workers
