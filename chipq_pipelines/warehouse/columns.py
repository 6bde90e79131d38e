"""Decoded events → Arrow tables shaped like the raw tables.

One Python list per column, then ``pa.Table.from_pydict`` with an explicit schema:
the fastest path measured (field notes: ~2× ``from_pylist``, ~200× ``executemany``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from chipq_pipelines.warehouse.types import KafkaCoordinates, LandedEvent, RejectedRecord

CANARY_METADATA_KEY = "chipq_canary"
#: The lot of chipq's end-to-end canaries: only events of this lot can be canaries (see ``is_canary``).
CANARY_LOT_ID = "chipq-canary"

_UTC = pa.timestamp("us", tz="UTC")
_STRING_MAP = pa.map_(pa.string(), pa.string())

#: Columns every raw event table ends with: canary flag, where the record was read, when it landed.
LANDING_COLUMNS = [
    ("is_canary", pa.bool_()),
    ("kafka_topic", pa.string()),
    ("kafka_partition", pa.int32()),
    ("kafka_offset", pa.int64()),
    ("kafka_timestamp", _UTC),
    ("ingested_at", _UTC),
]

INSPECTION_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("event_type", pa.string()),
        ("event_time", _UTC),
        ("event_date", pa.date32()),
        ("correlation_id", pa.string()),
        ("inspection_id", pa.string()),
        ("batch_id", pa.string()),
        ("chip_id", pa.string()),
        ("wafer_id", pa.string()),
        ("station_id", pa.string()),
        ("inspection_type", pa.string()),
        ("status", pa.string()),
        ("quality_score", pa.float64()),
        ("defect_count", pa.int32()),
        ("metadata", _STRING_MAP),
        ("recipe_id", pa.string()),
        *LANDING_COLUMNS,
    ]
)

DEFECT_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("defect_index", pa.int32()),
        ("defect_type", pa.string()),
        ("severity", pa.string()),
        ("confidence", pa.float64()),
        ("x", pa.float64()),
        ("y", pa.float64()),
        ("event_date", pa.date32()),
    ]
)

QUALITY_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("event_type", pa.string()),
        ("event_time", _UTC),
        ("correlation_id", pa.string()),
        ("scope", pa.string()),
        ("inspection_id", pa.string()),
        ("batch_id", pa.string()),
        ("chip_id", pa.string()),
        ("event_date", pa.date32()),
        ("defect_type", pa.string()),
        ("rule", pa.string()),
        ("threshold", pa.float64()),
        ("observed_value", pa.float64()),
        ("quality_score", pa.float64()),
        ("pass_fail", pa.bool_()),
        ("alert_level", pa.string()),
        ("metadata", _STRING_MAP),
        ("model_version", pa.string()),
        *LANDING_COLUMNS,
    ]
)

REJECTED_SCHEMA = pa.schema(
    [
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("key", pa.binary()),
        ("raw", pa.binary()),
        ("reason", pa.string()),
        ("rejected_at", _UTC),
    ]
)

_INSPECTION_COPIED = (
    "event_id",
    "event_type",
    "event_time",
    "inspection_id",
    "batch_id",
    "chip_id",
    "wafer_id",
    "station_id",
    "inspection_type",
    "status",
    "quality_score",
    "recipe_id",
)
_QUALITY_COPIED = (
    "event_id",
    "event_type",
    "event_time",
    "inspection_id",
    "batch_id",
    "chip_id",
    "defect_type",
    "rule",
    "threshold",
    "observed_value",
    "quality_score",
    "pass_fail",
    "alert_level",
    "model_version",
)


def is_canary(metadata: dict[str, str] | None, lot_id: str | None) -> bool:
    """Whether an event is one of chipq's end-to-end canaries: marked so, and of the canary lot.

    Both, because canaries are kept out of the marts: a producer that marks an event of a real
    lot as a canary must not be able to hide it from the quality figures.
    """
    return lot_id == CANARY_LOT_ID and metadata is not None and metadata.get(CANARY_METADATA_KEY) == "true"


def utc_date(moment: dt.datetime) -> dt.date:
    """The UTC calendar date of an aware datetime."""
    return moment.astimezone(dt.UTC).date()


def _kafka_timestamp(timestamp_ms: int | None) -> dt.datetime | None:
    if timestamp_ms is None or timestamp_ms <= 0:
        return None
    return dt.datetime.fromtimestamp(timestamp_ms / 1000, tz=dt.UTC)


def _kafka_timestamps(coordinates: Sequence[KafkaCoordinates]) -> pa.Array:
    millis = pa.array(
        [c.timestamp_ms if c.timestamp_ms and c.timestamp_ms > 0 else None for c in coordinates], pa.int64()
    )
    return pc.cast(pc.cast(millis, pa.timestamp("ms", tz="UTC")), _UTC)


def _landing_columns(coordinates: Sequence[KafkaCoordinates], ingested_at: dt.datetime) -> dict[str, pa.Array]:
    rows = len(coordinates)
    return {
        "kafka_topic": pa.array([c.topic for c in coordinates], pa.string()),
        "kafka_partition": pa.array([c.partition for c in coordinates], pa.int32()),
        "kafka_offset": pa.array([c.offset for c in coordinates], pa.int64()),
        "kafka_timestamp": _kafka_timestamps(coordinates),
        "ingested_at": pa.array([ingested_at] * rows, _UTC),
    }


def _field_columns(records: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Sequence[Any]]:
    """The values of ``names`` in every record, one sequence per name (None where a record lacks one).

    Records decoded against their schema have every field: one ``itemgetter`` per
    record and a ``zip`` transpose them in C, 5x faster than a comprehension per name.
    """
    if not records:
        return {name: [] for name in names}
    try:
        columns = list(zip(*map(itemgetter(*names), records), strict=True))
    except KeyError:
        return {name: [record.get(name) for record in records] for name in names}
    return dict(zip(names, columns, strict=True))


def inspection_tables(events: Sequence[LandedEvent], ingested_at: dt.datetime) -> tuple[pa.Table, pa.Table]:
    """Arrow tables for ``raw.inspection_events`` and ``raw.defects`` from validated events.

    Built column by column (one comprehension each): several times faster than
    appending field by field per event, and decoding is the bottleneck of ingest.
    """
    records = [event for event, _ in events]
    coordinates = [c for _, c in events]
    values = _field_columns(records, (*_INSPECTION_COPIED, "metadata", "defects", "correlation_id"))
    arrays: dict[str, pa.Array] = {
        name: pa.array(values[name], INSPECTION_SCHEMA.field(name).type) for name in _INSPECTION_COPIED
    }
    metadata = [m or {} for m in values["metadata"]]
    event_defects = [d or [] for d in values["defects"]]
    arrays["correlation_id"] = pa.array([c if c is not None else "" for c in values["correlation_id"]], pa.string())
    event_date = pc.cast(arrays["event_time"], pa.date32())  # UTC instants: the UTC calendar day
    arrays["event_date"] = event_date
    arrays["defect_count"] = pa.array([len(d) for d in event_defects], pa.int32())
    arrays["metadata"] = pa.array([list(m.items()) for m in metadata], _STRING_MAP)
    arrays["is_canary"] = pa.array(
        [is_canary(m, lot_id) for m, lot_id in zip(metadata, values["batch_id"], strict=True)], pa.bool_()
    )
    arrays.update(_landing_columns(coordinates, ingested_at))
    inspections = pa.Table.from_pydict(
        {name: arrays[name] for name in INSPECTION_SCHEMA.names}, schema=INSPECTION_SCHEMA
    )

    owner = [row for row, found in enumerate(event_defects) for _ in found]  # event row of each defect
    flat = [defect for found in event_defects for defect in found]
    defects = pa.Table.from_pydict(
        {
            "event_id": pc.take(arrays["event_id"], pa.array(owner, pa.int64())),
            "defect_index": pa.array([index for found in event_defects for index in range(len(found))], pa.int32()),
            "defect_type": pa.array([d["defect_type"] for d in flat], pa.string()),
            "severity": pa.array([d["severity"] for d in flat], pa.string()),
            "confidence": pa.array([d["confidence"] for d in flat], pa.float64()),
            "x": pa.array([d["location"]["x"] for d in flat], pa.float64()),
            "y": pa.array([d["location"]["y"] for d in flat], pa.float64()),
            "event_date": pc.take(event_date, pa.array(owner, pa.int64())),
        },
        schema=DEFECT_SCHEMA,
    )
    return inspections, defects


def quality_table(events: Sequence[LandedEvent], ingested_at: dt.datetime) -> pa.Table:
    """Arrow table for ``raw.quality_events`` from validated events."""
    columns: dict[str, list[object]] = {name: [] for name in QUALITY_SCHEMA.names}
    copied = [(name, columns[name]) for name in _QUALITY_COPIED]
    for event, coordinates in events:
        for name, column in copied:
            column.append(event.get(name))
        metadata = event.get("metadata") or {}
        event_date = event.get("event_date")
        columns["correlation_id"].append(event.get("correlation_id", ""))
        columns["scope"].append(event.get("scope") or "INSPECTION")
        columns["event_date"].append(dt.date.fromisoformat(event_date) if event_date else None)
        columns["metadata"].append(list(metadata.items()))
        columns["is_canary"].append(is_canary(metadata, event.get("batch_id")))
        columns["kafka_topic"].append(coordinates.topic)
        columns["kafka_partition"].append(coordinates.partition)
        columns["kafka_offset"].append(coordinates.offset)
        columns["kafka_timestamp"].append(_kafka_timestamp(coordinates.timestamp_ms))
        columns["ingested_at"].append(ingested_at)
    return pa.Table.from_pydict(columns, schema=QUALITY_SCHEMA)


def rejected_table(records: Sequence[RejectedRecord], rejected_at: dt.datetime) -> pa.Table:
    """Arrow table for ``ops.rejected_events``."""
    return pa.Table.from_pydict(
        {
            "topic": [r.topic for r in records],
            "partition": [r.partition for r in records],
            "offset": [r.offset for r in records],
            "key": [r.key for r in records],
            "raw": [r.raw for r in records],
            "reason": [r.reason for r in records],
            "rejected_at": [rejected_at] * len(records),
        },
        schema=REJECTED_SCHEMA,
    )


def event_ids_table(event_ids: Sequence[str]) -> pa.Table:
    """One-column Arrow table of event ids (for the already-landed lookup)."""
    return pa.Table.from_pydict({"event_id": list(event_ids)}, schema=pa.schema([("event_id", pa.string())]))
