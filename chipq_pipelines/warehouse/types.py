"""Small value types passed between the ingest layer and the warehouse."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class KafkaCoordinates:
    """Where one record was read: topic, partition, offset, key and broker timestamp.

    ``value`` optionally keeps the record's bytes exactly as read, so an event that
    decodes but fails the warehouse's validation lands in ``ops.rejected_events``
    with what came in (without it, the decoded event is stored as JSON instead).
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    timestamp_ms: int | None = None
    value: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RejectedRecord:
    """A record that could not become a row (poison message): kept with its raw bytes and why."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes
    reason: str


Event = dict[str, Any]
LandedEvent = tuple[Event, KafkaCoordinates]


@dataclass(frozen=True)
class ValidationBounds:
    """What the warehouse accepts beyond the Avro schema (scores, confidences, event times)."""

    earliest_event_time: dt.datetime = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    max_future: dt.timedelta = dt.timedelta(days=1)


@dataclass(frozen=True)
class OffsetGap:
    """Offsets ``first_offset``..``last_offset`` (inclusive) of one partition were gone before they were read."""

    partition: int
    first_offset: int
    last_offset: int

    @property
    def records(self) -> int:
        return self.last_offset - self.first_offset + 1

    def __str__(self) -> str:
        return f"partition {self.partition}: offsets {self.first_offset}..{self.last_offset} deleted before landing"


@dataclass(frozen=True)
class LandingResult:
    """What one ``land_batch`` call changed.

    ``touched_event_dates`` and ``touched_lot_ids`` come from the newly inserted,
    non-canary INSPECTION_COMPLETED events: exactly the mart partitions to rewrite.
    """

    inserted_inspection_events: int = 0
    inserted_quality_events: int = 0
    inserted_defects: int = 0
    duplicates: int = 0
    rejected: int = 0
    replayed_partitions: frozenset[int] = frozenset()
    offsets: dict[int, int] = field(default_factory=dict)
    touched_event_dates: frozenset[dt.date] = frozenset()
    touched_lot_ids: frozenset[str] = frozenset()
    gaps: tuple[OffsetGap, ...] = ()

    @property
    def inserted(self) -> int:
        """Events newly landed (inspection + quality)."""
        return self.inserted_inspection_events + self.inserted_quality_events


@dataclass(frozen=True)
class MartResult:
    """One mart partition rewrite: which partition, how many rows, and a preview."""

    table: str
    partition: str | None
    row_count: int
    preview: pd.DataFrame = field(repr=False)

    @property
    def preview_markdown(self) -> str:
        """The preview as a markdown table (for Dagster metadata)."""
        from chipq_pipelines.warehouse.formatting import markdown_table

        return markdown_table(self.preview)
