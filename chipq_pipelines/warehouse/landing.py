"""Landing decoded Kafka events effectively once: rows and offsets in one transaction."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from chipq_pipelines.errors import ChipqError
from chipq_pipelines.warehouse import columns
from chipq_pipelines.warehouse.marts import DAY_MART, LOT_MART
from chipq_pipelines.warehouse.prepare import PreparedBatch, prepare_batch
from chipq_pipelines.warehouse.schema import load_sql, transaction
from chipq_pipelines.warehouse.types import (
    Event,
    KafkaCoordinates,
    LandingResult,
    OffsetGap,
    RejectedRecord,
    ValidationBounds,
)


class StaleOffsetRangeError(ChipqError, RuntimeError):
    """A range does not start where the warehouse left off: a stale or overlapping run.

    Landing it would skip or repeat offsets, so the whole batch is rolled back.
    """


def pending_partitions(conn: duckdb.DuckDBPyConnection) -> tuple[set[dt.date], set[str]]:
    """Days and lots with landed rows that their mart has not been rewritten with yet."""
    days: set[dt.date] = set()
    lots: set[str] = set()
    for mart, key in conn.execute(load_sql("pending_select")).fetchall():
        if mart == DAY_MART:
            days.add(dt.date.fromisoformat(key))
        else:
            lots.add(key)
    return days, lots


def landed_offsets(conn: duckdb.DuckDBPyConnection, topic: str) -> dict[int, int]:
    """Next offset to read per partition of ``topic`` (last landed + 1); absent partitions were never landed."""
    rows = conn.execute(load_sql("select_landed_offsets"), {"topic": topic}).fetchall()
    return {int(partition): int(next_offset) for partition, next_offset in rows}


def _check_ranges(topic: str, offset_ranges: Mapping[int, tuple[int, int]], batch: PreparedBatch) -> None:
    for partition, (start, end) in offset_ranges.items():
        if start < 0 or end < start:
            raise ValueError(f"{topic}[{partition}]: invalid offset range [{start}, {end})")
    spans: list[tuple[str, int, int, int]] = []
    for table in (batch.inspections, batch.qualities):
        if table.num_rows:
            by_partition = table.group_by(["kafka_topic", "kafka_partition"])
            for row in by_partition.aggregate([("kafka_offset", "min"), ("kafka_offset", "max")]).to_pylist():
                spans.append(
                    (row["kafka_topic"], row["kafka_partition"], row["kafka_offset_min"], row["kafka_offset_max"])
                )
    spans += [(r.topic, r.partition, r.offset, r.offset) for r in batch.rejects]
    for record_topic, partition, first, last in spans:
        if record_topic != topic:
            raise ValueError(f"record from topic {record_topic!r} in a batch of {topic!r}")
        if partition not in offset_ranges:
            raise ValueError(f"{topic}[{partition}]@{first}: partition not in offset_ranges")
        start, end = offset_ranges[partition]
        if not (start <= first and last < end):
            raise ValueError(f"{topic}[{partition}]@{first}..{last}: outside the range [{start}, {end})")


def _replayed_partitions(
    topic: str, offset_ranges: Mapping[int, tuple[int, int]], landed: Mapping[int, int]
) -> frozenset[int]:
    """Partitions whose range is already fully landed; raises on any other mismatch."""
    replayed = set()
    for partition, (start, end) in sorted(offset_ranges.items()):
        next_offset = landed.get(partition)
        # A partition never landed accepts any start: retention may have removed offset 0.
        if next_offset is None or start == next_offset:
            continue
        if start < next_offset and end <= next_offset:
            replayed.add(partition)
            continue
        raise StaleOffsetRangeError(
            f"{topic}[{partition}]: range [{start}, {end}) does not start at the landed next offset {next_offset}"
        )
    return frozenset(replayed)


def _already_landed(
    conn: duckdb.DuckDBPyConnection, sql_name: str, table: pa.Table, event_days: pa.ChunkedArray
) -> set[str]:
    """Event ids of ``table`` already in raw, looked up only on the UTC days of the batch's event times.

    A producer's retry carries the same event_time, hence the same day: limiting the
    lookup to those days lets DuckDB's zone maps skip the rest of history.
    """
    if table.num_rows == 0:
        return set()
    days = pc.unique(event_days).to_pylist()
    landing_ids = pa.table({"event_id": table["event_id"]})
    conn.register("landing_event_ids", landing_ids)
    try:
        found: set[str] = set()
        for day in days:
            start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
            params = {"day_start": start, "day_end": start + dt.timedelta(days=1)}
            found.update(row[0] for row in conn.execute(load_sql(sql_name), params).fetchall())
        return found
    finally:
        conn.unregister("landing_event_ids")


def _without(table: pa.Table, column: str, values: set[str] | set[int]) -> pa.Table:
    if not values or table.num_rows == 0:
        return table
    return table.filter(pc.invert(pc.is_in(table[column], value_set=pa.array(sorted(values)))))


def _insert(
    conn: duckdb.DuckDBPyConnection, view_name: str, table: pa.Table, sql_name: str, seq: int | None = None
) -> int:
    if table.num_rows == 0:
        return 0
    conn.register(view_name, table)
    try:
        conn.execute(load_sql(sql_name), {"landing_seq": seq} if seq is not None else {})
    finally:
        conn.unregister(view_name)
    return int(table.num_rows)


def land_batch(
    conn: duckdb.DuckDBPyConnection,
    *,
    topic: str,
    offset_ranges: Mapping[int, tuple[int, int]],
    inspection_events: Sequence[tuple[Event, KafkaCoordinates]] = (),
    quality_events: Sequence[tuple[Event, KafkaCoordinates]] = (),
    rejected: Sequence[RejectedRecord] = (),
    bounds: ValidationBounds | None = None,
    ingested_at: dt.datetime | None = None,
) -> LandingResult:
    """Land one batch read from ``topic`` in ONE transaction: rows, defects, rejects and offsets.

    ``offset_ranges`` maps partition → ``(start, end)``, half-open: offsets ``start`` to
    ``end - 1`` were read, and ``end`` becomes the partition's next offset to read.
    Each range must start at the partition's landed next offset (any start is accepted
    for a partition never landed). A range already fully landed is a replay: its
    records are ignored and it reports no new rows. Any other range raises
    ``StaleOffsetRangeError`` and nothing is written.

    Events whose ``event_id`` is already in raw (or earlier in the batch) are counted as
    ``duplicates`` and skipped. Events failing validation (score or confidence NaN or
    outside [0, 1], ``event_time`` before ``bounds.earliest_event_time`` or more than
    ``bounds.max_future`` after ``ingested_at``) go to ``ops.rejected_events`` with the
    reason, next to the caller's ``rejected`` records (undecodable messages).
    """
    batch = prepare_batch(inspection_events, quality_events, rejected, bounds=bounds, ingested_at=ingested_at)
    return land_prepared(conn, topic=topic, offset_ranges=offset_ranges, batch=batch)


def land_prepared(
    conn: duckdb.DuckDBPyConnection,
    *,
    topic: str,
    offset_ranges: Mapping[int, tuple[int, int]],
    batch: PreparedBatch,
    gaps: Sequence[OffsetGap] = (),
) -> LandingResult:
    """Land a batch made by ``prepare_batch`` (possibly in another process): ``land_batch``'s DuckDB half.

    ``gaps`` are offsets inside ``offset_ranges`` that were gone from Kafka before they
    were read; they go to ``ops.offset_gaps`` in the same transaction as the offsets
    that skip them, so a skipped record is never skipped silently.
    """
    _check_ranges(topic, offset_ranges, batch)
    for gap in gaps:
        start, end = offset_ranges.get(gap.partition, (0, 0))
        if not start <= gap.first_offset <= gap.last_offset < end:
            raise ValueError(f"{topic}: gap {gap} is outside the landed ranges {dict(offset_ranges)}")
    with transaction(conn):
        result = _land_in_transaction(conn, topic, offset_ranges, batch)
        recorded = tuple(gap for gap in gaps if gap.partition in result.offsets)  # not for replayed partitions
        if recorded:
            table = pa.table(
                {
                    "topic": pa.array([topic] * len(recorded), pa.string()),
                    "partition": pa.array([gap.partition for gap in recorded], pa.int32()),
                    "first_offset": pa.array([gap.first_offset for gap in recorded], pa.int64()),
                    "last_offset": pa.array([gap.last_offset for gap in recorded], pa.int64()),
                    "detected_at": pa.array([batch.ingested_at] * len(recorded), pa.timestamp("us", tz="UTC")),
                }
            )
            _insert(conn, "landing_offset_gaps", table, "insert_offset_gaps")
            result = dataclasses.replace(result, gaps=recorded)
        return result


def _land_in_transaction(
    conn: duckdb.DuckDBPyConnection,
    topic: str,
    offset_ranges: Mapping[int, tuple[int, int]],
    batch: PreparedBatch,
) -> LandingResult:
    replayed = _replayed_partitions(topic, offset_ranges, landed_offsets(conn, topic))
    inspections = _without(batch.inspections, "kafka_partition", set(replayed))
    qualities = _without(batch.qualities, "kafka_partition", set(replayed))
    rejects = [record for record in batch.rejects if record.partition not in replayed]

    landed_inspections = _already_landed(conn, "existing_inspection_event_ids", inspections, inspections["event_date"])
    quality_days = pc.cast(qualities["event_time"], pa.date32())  # its event_date column is a DAY event's subject
    landed_qualities = _already_landed(conn, "existing_quality_event_ids", qualities, quality_days)
    inspections = _without(inspections, "event_id", landed_inspections)
    qualities = _without(qualities, "event_id", landed_qualities)
    defects = batch.defects
    if defects.num_rows and (replayed or landed_inspections):
        defects = defects.filter(pc.is_in(defects["event_id"], value_set=inspections["event_id"]))

    ((seq,),) = conn.execute("SELECT nextval('ops.change_seq')").fetchall()
    inserted_inspections = _insert(conn, "landing_inspection_events", inspections, "insert_inspection_events", seq)
    inserted_defects = _insert(conn, "landing_defects", defects, "insert_defects", seq)
    inserted_qualities = _insert(conn, "landing_quality_events", qualities, "insert_quality_events", seq)
    unique_rejects = list({(r.partition, r.offset): r for r in reversed(rejects)}.values())
    reject_table = columns.rejected_table(unique_rejects, batch.ingested_at)
    _insert(conn, "landing_rejected_events", reject_table, "insert_rejected_events", seq)

    new_offsets = {}
    for partition, (_, end) in sorted(offset_ranges.items()):
        if partition in replayed:
            continue
        params = {"topic": topic, "partition": partition, "next_offset": end, "updated_at": batch.ingested_at}
        conn.execute(load_sql("upsert_landed_offset"), params)
        new_offsets[partition] = end

    completed = inspections.filter(
        pc.and_(pc.equal(inspections["event_type"], "INSPECTION_COMPLETED"), pc.invert(inspections["is_canary"]))
    )
    touched_dates = frozenset(pc.unique(completed["event_date"]).to_pylist())
    touched_lots = frozenset(pc.unique(completed["batch_id"]).to_pylist())
    for mart, keys in (
        (DAY_MART, sorted(d.isoformat() for d in touched_dates)),
        (LOT_MART, sorted(touched_lots)),
    ):
        if keys:
            conn.execute(load_sql("pending_add"), {"mart": mart, "keys": keys, "since": batch.ingested_at})
    if inspections.num_rows:
        lot_days = inspections.select(["batch_id", "event_date"]).group_by(["batch_id", "event_date"]).aggregate([])
        _insert(conn, "landing_lot_days", lot_days, "lot_days_add")
    return LandingResult(
        inserted_inspection_events=inserted_inspections,
        inserted_quality_events=inserted_qualities,
        inserted_defects=inserted_defects,
        duplicates=batch.in_batch_duplicates + len(landed_inspections) + len(landed_qualities),
        rejected=len(unique_rejects),
        replayed_partitions=replayed,
        offsets=new_offsets,
        touched_event_dates=touched_dates,
        touched_lot_ids=touched_lots,
    )
