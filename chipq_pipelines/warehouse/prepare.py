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

from chipq_pipelines.warehouse import columns
from chipq_pipelines.warehouse.types import Event, LandedEvent, RejectedRecord, ValidationBounds
from chipq_pipelines.warehouse.validation import (
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

    @property
    def nbytes(self) -> int:
        """Arrow bytes held (the rejects' raw bytes included)."""
        rejected = sum(len(r.raw) + len(r.key or b"") for r in self.rejects)
        return int(self.inspections.nbytes + self.defects.nbytes + self.qualities.nbytes + rejected)


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


def prepare_batch(
    inspection_events: Sequence[LandedEvent] = (),
    quality_events: Sequence[LandedEvent] = (),
    rejected: Sequence[RejectedRecord] = (),
    *,
    bounds: ValidationBounds | None = None,
    ingested_at: dt.datetime | None = None,
) -> PreparedBatch:
    """Validate decoded events and build their Arrow tables (see ``land_batch`` for the rules)."""
    bounds = bounds or ValidationBounds()
    ingested_at = ingested_at or dt.datetime.now(dt.UTC)
    rejects = list(rejected)
    inspections, inspection_dupes = _validated(
        inspection_events, inspection_event_problem, ingested_at, bounds, rejects
    )
    qualities, quality_dupes = _validated(quality_events, quality_event_problem, ingested_at, bounds, rejects)
    inspection_table, defect_table = columns.inspection_tables(inspections, ingested_at)
    return PreparedBatch(
        inspections=inspection_table,
        defects=defect_table,
        qualities=columns.quality_table(qualities, ingested_at),
        rejects=rejects,
        in_batch_duplicates=inspection_dupes + quality_dupes,
        ingested_at=ingested_at,
    )
