"""A batch made ready to land, without touching DuckDB: validated, deduplicated within itself, as Arrow.

This is the CPU-heavy half of landing (validation and building columns), split from
the DuckDB half so that ingest can run it in worker processes while the writer
lands the previous chunk. A ``PreparedBatch`` pickles cheaply (Arrow buffers).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from chipq_pipelines.warehouse import columns
from chipq_pipelines.warehouse.types import Event, LandedEvent, RejectedRecord, ValidationBounds
from chipq_pipelines.warehouse.validation import (
    CONTROL_CHARACTERS_RE2,
    INSPECTION_IDS,
    INSPECTION_OPTIONAL_IDS,
    inspection_event_problem,
    quality_event_problem,
    rejected_from_event,
)


@dataclass
class PreparedBatch:
    """Rows of one batch as Arrow tables shaped like the raw tables, plus what could not become rows.

    ``inspections`` and ``qualities`` hold each event_id once (its first occurrence in
    Kafka order); ``defects`` belong to those inspections. Whether an event already
    landed in an earlier batch is decided when landing, inside the transaction.
    """

    inspections: pa.Table
    defects: pa.Table
    qualities: pa.Table
    rejects: list[RejectedRecord] = field(default_factory=list)
    in_batch_duplicates: int = 0
    ingested_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


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


def _first_occurrences(events: Sequence[LandedEvent]) -> tuple[list[LandedEvent], int]:
    """Each event_id's first occurrence in Kafka order, and how many repeats were dropped."""
    seen: set[str] = set()
    first: list[LandedEvent] = []
    for item in sorted(events, key=lambda item: (item[1].partition, item[1].offset)):
        event_id = item[0]["event_id"]
        if event_id not in seen:
            seen.add(event_id)
            first.append(item)
    return first, len(events) - len(first)


def _out_of_unit_interval(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    outside = pc.or_(pc.is_nan(values), pc.or_(pc.less(values, 0.0), pc.greater(values, 1.0)))
    return pc.fill_null(outside, False)


def _bad_identifiers(table: pa.Table) -> pa.Array:
    """Rows with a blank required identifier or a control character in any identifier."""
    bad = None
    for name in (*INSPECTION_IDS, *INSPECTION_OPTIONAL_IDS):
        values = table[name]
        flagged = pc.fill_null(pc.match_substring_regex(values, CONTROL_CHARACTERS_RE2), False)
        if name in INSPECTION_IDS:
            flagged = pc.or_(flagged, pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(values)), 0))
        bad = flagged if bad is None else pc.or_(bad, flagged)
    return bad


def _schema_checked_inspections(
    events: Sequence[LandedEvent], ingested_at: dt.datetime, bounds: ValidationBounds, rejects: list[RejectedRecord]
) -> tuple[pa.Table, pa.Table, int]:
    """Tables of Avro-decoded inspection events, checked column by column.

    The Avro schema already guarantees types, required fields and enum symbols, so
    only values are checked here, on whole Arrow columns: identifiers (not blank, no
    control characters), scores and confidences in [0, 1], finite locations, event
    times within the bounds. A chunk with a flagged
    row (rare) is validated field by field instead, so that reasons and the choice of
    which occurrence of an event id lands are exactly those of the general path.
    """
    first, duplicates = _first_occurrences(events)
    inspections, defects = columns.inspection_tables(first, ingested_at)
    if not first:
        return inspections, defects, duplicates
    times = inspections["event_time"]
    suspect = pc.or_(
        pc.or_(_out_of_unit_interval(inspections["quality_score"]), _bad_identifiers(inspections)),
        pc.or_(
            pc.less(times, pa.scalar(bounds.earliest_event_time, times.type)),
            pc.greater(times, pa.scalar(ingested_at + bounds.max_future, times.type)),
        ),
    )
    if defects.num_rows:
        bad_defects = pc.or_(
            _out_of_unit_interval(defects["confidence"]),
            pc.invert(pc.and_(pc.is_finite(defects["x"]), pc.is_finite(defects["y"]))),
        )
        owners = pc.filter(defects["event_id"], bad_defects)
        suspect = pc.or_(suspect, pc.is_in(inspections["event_id"], value_set=pc.unique(owners)))
    if not pc.any(suspect).as_py():
        return inspections, defects, duplicates
    valid, duplicates = _validated(events, inspection_event_problem, ingested_at, bounds, rejects)
    inspections, defects = columns.inspection_tables(valid, ingested_at)
    return inspections, defects, duplicates


def prepare_batch(
    inspection_events: Sequence[LandedEvent] = (),
    quality_events: Sequence[LandedEvent] = (),
    rejected: Sequence[RejectedRecord] = (),
    *,
    bounds: ValidationBounds | None = None,
    ingested_at: dt.datetime | None = None,
    schema_checked: bool = False,
) -> PreparedBatch:
    """Validate decoded events and build their Arrow tables (see ``land_batch`` for the rules).

    ``schema_checked``: the events were decoded against their Avro schema (ingest), so
    only their values are checked, column-wise; otherwise (any dicts) every field is.
    """
    bounds = bounds or ValidationBounds()
    ingested_at = ingested_at or dt.datetime.now(dt.UTC)
    rejects = list(rejected)
    if schema_checked:
        inspection_table, defect_table, inspection_dupes = _schema_checked_inspections(
            inspection_events, ingested_at, bounds, rejects
        )
    else:
        inspections, inspection_dupes = _validated(
            inspection_events, inspection_event_problem, ingested_at, bounds, rejects
        )
        inspection_table, defect_table = columns.inspection_tables(inspections, ingested_at)
    qualities, quality_dupes = _validated(quality_events, quality_event_problem, ingested_at, bounds, rejects)
    return PreparedBatch(
        inspections=inspection_table,
        defects=defect_table,
        qualities=columns.quality_table(qualities, ingested_at),
        rejects=rejects,
        in_batch_duplicates=inspection_dupes + quality_dupes,
        ingested_at=ingested_at,
    )
