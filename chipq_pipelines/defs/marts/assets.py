"""Quality marts (daily defect rates, per-lot quality scores) and the analyst snapshot."""

import datetime as dt

import dagster as dg

from chipq_pipelines.defs.ingest.assets import OWNER, WRITER_POOL, raw_inspection_events, raw_quality_events
from chipq_pipelines.defs.partitions import daily_partitions, lot_id_from_partition_key, lot_partitions
from chipq_pipelines.defs.resources import WarehouseResource
from chipq_pipelines.warehouse.marts import rewrite_defect_rates, rewrite_lot_quality
from chipq_pipelines.warehouse.snapshot import publish_snapshot
from chipq_pipelines.warehouse.types import MartResult


def _mart_metadata(result: MartResult) -> dict[str, dg.MetadataValue]:
    columns = [dg.TableColumn(name, str(dtype)) for name, dtype in result.preview.dtypes.items()]
    return {
        "partition": dg.MetadataValue.text(result.partition or "all"),
        "dagster/row_count": dg.MetadataValue.int(result.row_count),
        "dagster/column_schema": dg.MetadataValue.table_schema(dg.TableSchema(columns=columns)),
        "preview": dg.MetadataValue.md(result.preview_markdown),
    }


@dg.asset(
    key=["marts", "defect_rates"],
    deps=[raw_inspection_events],
    partitions_def=daily_partitions,
    group_name="quality_marts",
    owners=[OWNER],
    kinds={"duckdb", "sql"},
    pool=WRITER_POOL,
    description=(
        "Daily defect rates per defect type (`marts.defect_rates`), by the UTC date of event_time, over "
        "INSPECTION_COMPLETED events: chips_inspected, chips_with_defect, defect_count and "
        "defect_rate = chips_with_defect / chips_inspected. A late event re-opens only its own day."
    ),
)
def defect_rates(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Rewrite one day of ``marts.defect_rates`` in one transaction (idempotent)."""
    day = dt.date.fromisoformat(context.partition_key)
    with warehouse.connect() as conn:
        result = rewrite_defect_rates(conn, day)
    context.log.info(f"defect_rates {day}: {result.row_count} rows")
    return dg.MaterializeResult(metadata=_mart_metadata(result))


@dg.asset(
    key=["marts", "lot_quality_scores"],
    deps=[raw_inspection_events],
    partitions_def=lot_partitions,
    group_name="quality_marts",
    owners=[OWNER],
    kinds={"duckdb", "sql"},
    pool=WRITER_POOL,
    description=(
        "One row per lot (`marts.lot_quality_scores`) over each inspection's latest INSPECTION_COMPLETED "
        "event: inspections, chips, mean/min quality score, pass rate, defect density, critical defects."
    ),
)
def lot_quality_scores(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Rewrite one lot's row of ``marts.lot_quality_scores`` in one transaction (idempotent)."""
    lot_id = lot_id_from_partition_key(context.partition_key)
    with warehouse.connect() as conn:
        result = rewrite_lot_quality(conn, lot_id, pass_threshold=warehouse.pass_threshold)
    context.log.info(f"lot_quality_scores {lot_id!r}: {result.row_count} rows")
    return dg.MaterializeResult(metadata=_mart_metadata(result))


@dg.asset(
    key=["analyst_snapshot"],
    deps=[raw_inspection_events, raw_quality_events, defect_rates, lot_quality_scores],
    group_name="analysts",
    owners=[OWNER],
    kinds={"duckdb"},
    pool=WRITER_POOL,
    description=(
        "Read-only copy of the warehouse for analysts (`$CHIPQ_HOME/analytics.duckdb`), written inside "
        "the writer slot and renamed into place atomically. `chipq sql` queries it."
    ),
)
def analyst_snapshot(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Publish the analyst snapshot: a consistent copy, then an atomic rename."""
    with warehouse.connect() as conn:
        published = publish_snapshot(conn, warehouse.analyst_snapshot_path())
    context.log.info(f"published {published.path} ({published.size_bytes} bytes)")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(published.path)),
            "size_bytes": dg.MetadataValue.int(published.size_bytes),
            "table_rows": dg.MetadataValue.json(published.table_rows),
        }
    )


defect_rates_job = dg.define_asset_job("materialize_defect_rates", selection=[defect_rates])
lot_quality_job = dg.define_asset_job("materialize_lot_quality", selection=[lot_quality_scores])
snapshot_job = dg.define_asset_job("publish_analyst_snapshot", selection=[analyst_snapshot])
