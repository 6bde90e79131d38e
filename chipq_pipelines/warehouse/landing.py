"""Landing decoded Kafka events effectively once: rows and offsets in one transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence

import duckdb
import pyarrow as pa

from chipq_pipelines.warehouse import columns
from chipq_pipelines.warehouse.schema import load_sql
from chipq_pipelines.warehouse.types import (
    Event,
    KafkaCoordinates,
    LandedEvent,
    LandingResult,
    RejectedRecord,
    ValidationBounds,
)
from chipq_pipelines.warehouse.validation import (
    inspection_event_problem,
    quality_event_problem,
    rejected_from_event,
)


class StaleOffsetRangeError(RuntimeError):
    """A range does not start where the warehouse left off: a stale or overlapping run.

    Landing it would skip or repeat offsets, so the whole batch is rolled back.
    """


LOT_MART = "lot_quality_scores"


def pending_partitions(conn: duckdb.DuckDBPyConnection) -> tuple[set[dt.date], set[str]]:
    """Days and lots with landed rows that their mart has not been rewritten with yet."""
    days: set[dt.date] = set()
    lots: set[str] = set()
    for mart, key in conn.execute(load_sql("pending_select")).fetchall():
        if mart == "defect_rates":
            days.add(dt.date.fromisoformat(key))
        else:
            lots.add(key)
    return days, lots


def landed_offsets(conn: duckdb.DuckDBPyConnection, topic: str) -> dict[int, int]:
    """Next offset to read per partition of ``topic`` (last landed + 1); absent partitions were never landed."""
    rows = conn.execute(load_sql("select_landed_offsets"), {"topic": topic}).fetchall()
    return {int(partition): int(next_offset) for partition, next_offset in rows}


def _check_request(
    topic: str,
    offset_ranges: Mapping[int, tuple[int, int]],
    events: Iterable[KafkaCoordinates],
    rejected: Iterable[RejectedRecord],
) -> None:
    for partition, (start, end) in offset_ranges.items():
        if start < 0 or end < start:
            raise ValueError(f"{topic}[{partition}]: invalid offset range [{start}, {end})")
    records = [(c.topic, c.partition, c.offset) for c in events]
    records += [(r.topic, r.partition, r.offset) for r in rejected]
    for record_topic, partition, offset in records:
        if record_topic != topic:
            raise ValueError(f"record from topic {record_topic!r} in a batch of {topic!r}")
        if partition not in offset_ranges:
            raise ValueError(f"{topic}[{partition}]@{offset}: partition not in offset_ranges")
        start, end = offset_ranges[partition]
        if not start <= offset < end:
            raise ValueError(f"{topic}[{partition}]@{offset}: outside the range [{start}, {end})")


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


def _validated(
    events: Sequence[LandedEvent],
    check: Callable[[Event, dt.datetime, ValidationBounds], str | None],
    ingested_at: dt.datetime,
    bounds: ValidationBounds,
    rejects: list[RejectedRecord],
) -> tuple[list[LandedEvent], int]:
    """Valid events, first occurrence of each event_id in Kafka order; invalid ones go to ``rejects``."""
    seen: set[str] = set()
    valid: list[LandedEvent] = []
    in_batch_duplicates = 0
    for event, coordinates in sorted(events, key=lambda item: (item[1].partition, item[1].offset)):
        problem = check(event, ingested_at, bounds)
        if problem:
            rejects.append(rejected_from_event(event, coordinates, problem))
        elif event["event_id"] in seen:
            in_batch_duplicates += 1
        else:
            seen.add(event["event_id"])
            valid.append((event, coordinates))
    return valid, in_batch_duplicates


def _already_landed(conn: duckdb.DuckDBPyConnection, sql_name: str, events: Sequence[LandedEvent]) -> set[str]:
    if not events:
        return set()
    conn.register("landing_event_ids", columns.event_ids_table([event["event_id"] for event, _ in events]))
    try:
        return {row[0] for row in conn.execute(load_sql(sql_name)).fetchall()}
    finally:
        conn.unregister("landing_event_ids")


def _insert(conn: duckdb.DuckDBPyConnection, view_name: str, table: pa.Table, sql_name: str) -> int:
    if table.num_rows == 0:
        return 0
    conn.register(view_name, table)
    try:
        conn.execute(load_sql(sql_name))
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
    bounds = bounds or ValidationBounds()
    ingested_at = ingested_at or dt.datetime.now(dt.UTC)
    _check_request(topic, offset_ranges, [c for _, c in (*inspection_events, *quality_events)], rejected)
    conn.execute("BEGIN TRANSACTION")
    try:
        result = _land_in_transaction(
            conn, topic, offset_ranges, inspection_events, quality_events, rejected, bounds, ingested_at
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return result


def _land_in_transaction(
    conn: duckdb.DuckDBPyConnection,
    topic: str,
    offset_ranges: Mapping[int, tuple[int, int]],
    inspection_events: Sequence[LandedEvent],
    quality_events: Sequence[LandedEvent],
    rejected: Sequence[RejectedRecord],
    bounds: ValidationBounds,
    ingested_at: dt.datetime,
) -> LandingResult:
    replayed = _replayed_partitions(topic, offset_ranges, landed_offsets(conn, topic))
    inspection_events = [item for item in inspection_events if item[1].partition not in replayed]
    quality_events = [item for item in quality_events if item[1].partition not in replayed]
    rejects = [record for record in rejected if record.partition not in replayed]

    inspections, inspection_dupes = _validated(
        inspection_events, inspection_event_problem, ingested_at, bounds, rejects
    )
    qualities, quality_dupes = _validated(quality_events, quality_event_problem, ingested_at, bounds, rejects)
    landed_inspections = _already_landed(conn, "existing_inspection_event_ids", inspections)
    landed_qualities = _already_landed(conn, "existing_quality_event_ids", qualities)
    new_inspections = [item for item in inspections if item[0]["event_id"] not in landed_inspections]
    new_qualities = [item for item in qualities if item[0]["event_id"] not in landed_qualities]

    inspection_table, defect_table = columns.inspection_tables(new_inspections, ingested_at)
    inserted_inspections = _insert(conn, "landing_inspection_events", inspection_table, "insert_inspection_events")
    inserted_defects = _insert(conn, "landing_defects", defect_table, "insert_defects")
    inserted_qualities = _insert(
        conn, "landing_quality_events", columns.quality_table(new_qualities, ingested_at), "insert_quality_events"
    )
    unique_rejects = list({(r.partition, r.offset): r for r in reversed(rejects)}.values())
    reject_table = columns.rejected_table(unique_rejects, ingested_at)
    _insert(conn, "landing_rejected_events", reject_table, "insert_rejected_events")

    new_offsets = {}
    for partition, (_, end) in sorted(offset_ranges.items()):
        if partition in replayed:
            continue
        params = {"topic": topic, "partition": partition, "next_offset": end, "updated_at": ingested_at}
        conn.execute(load_sql("upsert_landed_offset"), params)
        new_offsets[partition] = end

    completed = [
        event
        for event, _ in new_inspections
        if event["event_type"] == "INSPECTION_COMPLETED" and not columns.is_canary(event.get("metadata"))
    ]
    touched_dates = frozenset(columns.utc_date(event["event_time"]) for event in completed)
    touched_lots = frozenset(event["batch_id"] for event in completed)
    for mart, keys in (
        ("defect_rates", sorted(d.isoformat() for d in touched_dates)),
        (LOT_MART, sorted(touched_lots)),
    ):
        if keys:
            conn.execute(load_sql("pending_add"), {"mart": mart, "keys": keys, "since": ingested_at})
    return LandingResult(
        inserted_inspection_events=inserted_inspections,
        inserted_quality_events=inserted_qualities,
        inserted_defects=inserted_defects,
        duplicates=inspection_dupes + quality_dupes + len(landed_inspections) + len(landed_qualities),
        rejected=len(unique_rejects),
        replayed_partitions=replayed,
        offsets=new_offsets,
        touched_event_dates=touched_dates,
        touched_lot_ids=touched_lots,
    )
