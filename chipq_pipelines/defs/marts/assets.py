"""Quality marts (daily defect rates, per-lot quality scores) and the analyst snapshot.

In the pipeline cycle the raw inspection step rewrites the partitions its rows
touched (see ``defs/ingest/assets.py``); these partitioned assets are what a
backfill, the daily schedule or the UI materializes, with the same rewrites.
"""

import datetime as dt
import warnings

import dagster as dg

from chipq_pipelines.defs.ingest.assets import raw_inspection_events, raw_quality_events
from chipq_pipelines.defs.partitions import daily_partitions, lot_id_from_partition_key, lot_partitions
from chipq_pipelines.defs.resources import WarehouseResource
from chipq_pipelines.defs.shared import DEFECT_RATES, LOT_QUALITY, ON_UPSTREAM_CHANGE, warehouse_asset
from chipq_pipelines.warehouse.formatting import markdown_table
from chipq_pipelines.warehouse.marts import rewrite_days, rewrite_lots
from chipq_pipelines.warehouse.snapshot import publish_snapshot
from chipq_pipelines.warehouse.types import MartResult


def _mart_metadata(result: MartResult, partition_count: int) -> dict[str, dg.MetadataValue]:
    """Rows, schema and a preview of the partitions one run rewrote (one, or a contiguous range)."""
    columns = [dg.TableColumn(name, str(dtype)) for name, dtype in result.preview.dtypes.items()]
    return {
        "partitions": dg.MetadataValue.text(result.partition or "none"),
        "partitions_rewritten": dg.MetadataValue.int(partition_count),
        "dagster/row_count": dg.MetadataValue.int(result.row_count),
        "dagster/column_schema": dg.MetadataValue.table_schema(dg.TableSchema(columns=columns)),
        "preview": dg.MetadataValue.md(markdown_table(result.preview) if len(result.preview) else "(no rows)"),
    }


# A backfill rewrites its whole range of partitions in one run: one process and
# one DuckDB open for many lots instead of one each.
# (Dagster labels the parameter beta; we rely only on its documented behaviour.)
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)
SINGLE_RUN = dg.BackfillPolicy.single_run()


@warehouse_asset(
    key=DEFECT_RATES,
    deps=[raw_inspection_events],
    partitions_def=daily_partitions,
    backfill_policy=SINGLE_RUN,
    group_name="quality_marts",
    kinds={"duckdb", "sql"},
    description=(
        "Daily defect rates per defect type (`marts.defect_rates`), by the UTC date of event_time, over "
        "INSPECTION_COMPLETED events: chips_inspected, chips_with_defect, defect_count and "
        "defect_rate = chips_with_defect / chips_inspected. A late event re-opens only its own day."
    ),
)
def defect_rates(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Rewrite the run's days of ``marts.defect_rates`` in one set-based transaction (idempotent)."""
    days = [dt.date.fromisoformat(key) for key in context.partition_keys]
    with warehouse.connect() as conn:
        result = rewrite_days(conn, days)
    context.log.info(f"defect_rates: rewrote {len(days)} days, {result.row_count} rows")
    return dg.MaterializeResult(metadata=_mart_metadata(result, len(days)))


@warehouse_asset(
    key=LOT_QUALITY,
    deps=[raw_inspection_events],
    partitions_def=lot_partitions,
    backfill_policy=SINGLE_RUN,
    group_name="quality_marts",
    kinds={"duckdb", "sql"},
    description=(
        "One row per lot (`marts.lot_quality_scores`) over each inspection's latest INSPECTION_COMPLETED "
        "event: inspections, chips, mean/min quality score, pass rate, defect density, critical defects."
    ),
)
def lot_quality_scores(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Rewrite the run's lots of ``marts.lot_quality_scores`` in one set-based transaction (idempotent)."""
    lot_ids = [lot_id_from_partition_key(key) for key in context.partition_keys]
    with warehouse.connect() as conn:
        result = rewrite_lots(conn, lot_ids, pass_threshold=warehouse.pass_threshold)
    context.log.info(f"lot_quality_scores: rewrote {len(lot_ids)} lots")
    return dg.MaterializeResult(metadata=_mart_metadata(result, len(lot_ids)))


@warehouse_asset(
    key=["analyst_snapshot"],
    deps=[raw_inspection_events, raw_quality_events, defect_rates, lot_quality_scores],
    group_name="analysts",
    kinds={"duckdb"},
    automation_condition=ON_UPSTREAM_CHANGE,
    description=(
        "Read-only view of the warehouse for analysts (`$CHIPQ_HOME/analytics.duckdb`, a link to one of a few "
        "DuckDB copies): a copy no reader holds is brought up to date with what changed since it was last "
        "published, then the link is swapped atomically. `chipq sql` queries it."
    ),
)
def analyst_snapshot(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Publish the analyst snapshot: a free copy brought up to date, then an atomic link swap."""
    with warehouse.connect() as conn:
        published = publish_snapshot(conn, warehouse.analyst_snapshot_path())
    context.log.info(
        f"published {published.path} → {published.copy} ({published.mode}, up to change {published.change_seq}, "
        f"{published.seconds:.2f} s)"
    )
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(published.path)),
            "copy": dg.MetadataValue.path(str(published.copy)),
            "mode": dg.MetadataValue.text(published.mode),
            "change_seq": dg.MetadataValue.int(published.change_seq),
            "seconds": dg.MetadataValue.float(round(published.seconds, 3)),
            "size_bytes": dg.MetadataValue.int(published.size_bytes),
            "table_rows": dg.MetadataValue.json(published.table_rows),
        }
    )


defect_rates_job = dg.define_asset_job(
    "materialize_defect_rates",
    selection=[defect_rates],
    description="Rewrite days of marts.defect_rates (the daily schedule's job; any range from the UI).",
    tags={"dagster/max_retries": "2"},  # a broker or disk hiccup at 00:15 is retried by Dagster
)
lot_quality_job = dg.define_asset_job(
    "materialize_lot_quality",
    selection=[lot_quality_scores],
    description="Rewrite lots of marts.lot_quality_scores (a backfill of any lots from the UI).",
)
