"""What every chipq asset shares: its owner, the DuckDB writer pool, the mart keys, the automation rule.

DuckDB allows one writing process per file, so every step that opens the
warehouse runs in the ``duckdb_writer`` pool (one slot, set in dagster.yaml).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dagster as dg

OWNER = "team:quality-analytics"
WRITER_POOL = "duckdb_writer"

RAW_INSPECTIONS = dg.AssetKey(["raw", "inspection_events"])
RAW_QUALITY = dg.AssetKey(["raw", "quality_events"])
DEFECT_RATES = dg.AssetKey(["marts", "defect_rates"])
LOT_QUALITY = dg.AssetKey(["marts", "lot_quality_scores"])
THRESHOLD_VIOLATIONS = dg.AssetKey(["ops", "threshold_violation_events"])
KAFKA_INSPECTIONS = dg.AssetKey(["kafka", "inspection_events"])
KAFKA_QUALITY = dg.AssetKey(["kafka", "quality_events"])

#: Steps that only react to "upstream changed" (the alerts, the analysts' view). In a pipeline cycle they run
#: in the same run as what changed them; when something else changes a mart (the daily schedule, a backfill
#: or a materialization from the UI), the automation sensor requests them once, after that run.
ON_UPSTREAM_CHANGE = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("upstream changed")


def warehouse_asset(**kwargs: Any) -> Callable[..., dg.AssetsDefinition]:
    """``@dg.asset`` for an asset that writes the warehouse: chipq's owner and the writer pool."""
    return dg.asset(owners=[OWNER], pool=WRITER_POOL, **kwargs)


def warehouse_check(**kwargs: Any) -> Callable[..., dg.AssetChecksDefinition]:
    """``@dg.asset_check`` for a check that reads the warehouse: in the writer pool (DuckDB's one process)."""
    return dg.asset_check(pool=WRITER_POOL, **kwargs)
