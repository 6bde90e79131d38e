"""chipq's DuckDB warehouse: schema, effectively-once landing, mart rewrites, analyst snapshot.

Storage stays behind this module; Dagster ops call these functions while holding the
single ``duckdb_writer`` slot, and analysts only ever read the published snapshot.
"""

from chipq_pipelines.warehouse.formatting import FORMATS, format_result, markdown_table
from chipq_pipelines.warehouse.landing import StaleOffsetRangeError, land_batch, landed_offsets
from chipq_pipelines.warehouse.marts import (
    DEFAULT_PASS_THRESHOLD,
    rewrite_all_marts,
    rewrite_days,
    rewrite_defect_rates,
    rewrite_lot_quality,
    rewrite_lots,
)
from chipq_pipelines.warehouse.schema import connect, ensure_schema
from chipq_pipelines.warehouse.snapshot import (
    PublishedSnapshot,
    open_snapshot,
    publish_snapshot,
    query_snapshot,
    snapshot_age_seconds,
)
from chipq_pipelines.warehouse.types import (
    KafkaCoordinates,
    LandingResult,
    MartResult,
    OffsetGap,
    RejectedRecord,
    ValidationBounds,
)

__all__ = [
    "DEFAULT_PASS_THRESHOLD",
    "FORMATS",
    "KafkaCoordinates",
    "LandingResult",
    "MartResult",
    "OffsetGap",
    "PublishedSnapshot",
    "RejectedRecord",
    "StaleOffsetRangeError",
    "ValidationBounds",
    "connect",
    "ensure_schema",
    "format_result",
    "land_batch",
    "landed_offsets",
    "markdown_table",
    "open_snapshot",
    "publish_snapshot",
    "query_snapshot",
    "rewrite_all_marts",
    "rewrite_days",
    "rewrite_defect_rates",
    "rewrite_lot_quality",
    "rewrite_lots",
    "snapshot_age_seconds",
]
