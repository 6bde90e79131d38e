"""Raw event assets: exact Kafka offset ranges landed in DuckDB, effectively once.

A run lands its ranges and, in the same step and DuckDB connection, rewrites
the mart partitions the new rows touched (``marts.defect_rates`` days and
``marts.lot_quality_scores`` lots), recording each as a materialization of that
partition. Why here and not in partition runs of the marts: a Dagster run
targets partitions of one partitions definition, so days and lots would take
two more runs per cycle, each costing seconds to launch (a process that loads
the code), which is most of the freshness budget. The mart assets keep their
own partitioned runs for backfills, the daily schedule and the UI; both paths
call the same set-based rewrites.
"""

import json

import dagster as dg
from pydantic import Field

from chipq_pipelines.defs.partitions import LANDING_BOUNDS, daily_partitions, lot_partition_key, lot_partitions
from chipq_pipelines.defs.resources import KafkaResource, WarehouseResource
from chipq_pipelines.defs.shared import (
    DEFECT_RATES,
    KAFKA_INSPECTIONS,
    KAFKA_QUALITY,
    LOT_QUALITY,
    RAW_INSPECTIONS,
    RAW_QUALITY,
    warehouse_asset,
)
from chipq_pipelines.ingest.reader import IngestSummary, ingest_ranges
from chipq_pipelines.warehouse.marts import rewrite_days, rewrite_lots


class OffsetRange(dg.Config):
    """Offsets ``start`` (inclusive) to ``end`` (exclusive) of one partition."""

    partition: int
    start: int
    end: int


class IngestConfig(dg.Config):
    """The exact ranges an ingest step reads; planned by ``kafka_offsets_sensor`` (none: nothing to read)."""

    ranges: list[OffsetRange] = Field(default_factory=list)
    #: A chunk (one landing transaction) ends at this many records or about this many bytes of values.
    chunk_size: int = 50_000
    chunk_bytes: int = 32 * 1024 * 1024


def ingest_metadata(summary: IngestSummary) -> dict[str, dg.MetadataValue]:
    """What the step read, landed and rewrote, shown on the materialization."""
    return {
        "records_read": dg.MetadataValue.int(summary.records),
        "events_inserted": dg.MetadataValue.int(summary.inserted),
        "duplicates_skipped": dg.MetadataValue.int(summary.duplicates),
        "rejected": dg.MetadataValue.int(summary.rejected),
        "offset_ranges": dg.MetadataValue.json({str(p): list(r) for p, r in summary.read.items()}),
        "landed_offsets": dg.MetadataValue.json({str(p): o for p, o in summary.offsets.items()}),
        "touched_event_dates": dg.MetadataValue.json(sorted(d.isoformat() for d in summary.touched_event_dates)),
        "touched_lots": dg.MetadataValue.int(len(summary.touched_lot_ids)),
        "offset_gaps": dg.MetadataValue.int(len(summary.gaps)),
        "records_lost_to_gaps": dg.MetadataValue.int(sum(gap.records for gap in summary.gaps)),
        "warnings": dg.MetadataValue.json(summary.warnings),
    }


def _record_mart_partitions(context: dg.AssetExecutionContext, summary: IngestSummary) -> None:
    """Add new lots to the ``lots`` partitions and record each rewritten partition's materialization."""
    instance = context.instance
    run = {"rewritten_by": dg.MetadataValue.text(f"{context.asset_key.to_user_string()} (run {context.run.run_id})")}
    for day in sorted(d.isoformat() for d in summary.touched_event_dates):
        if daily_partitions.has_partition_key(day):
            context.log_event(dg.AssetMaterialization(asset_key=DEFECT_RATES, partition=day, metadata=run))
        else:
            context.log.warning(f"event date {day} has no defect_rates partition (rewritten, not recorded)")
    lot_keys = sorted(lot_partition_key(lot) for lot in summary.touched_lot_ids)
    if lot_keys:
        known = set(instance.get_dynamic_partitions(lot_partitions.name))
        new = [key for key in lot_keys if key not in known]
        if new:
            instance.add_dynamic_partitions(lot_partitions.name, new)
    for key in lot_keys:
        context.log_event(dg.AssetMaterialization(asset_key=LOT_QUALITY, partition=key, metadata=run))


def _ingest(
    context: dg.AssetExecutionContext,
    config: IngestConfig,
    kafka: KafkaResource,
    warehouse: WarehouseResource,
    topic: str,
) -> dg.MaterializeResult:
    planned = {r.partition: (r.start, r.end) for r in config.ranges}
    if not planned and topic != kafka.inspection_topic:
        # Nothing planned: no reason to open the warehouse (the inspection step, which rewrites
        # the marts, always does: it also catches up partitions an interrupted run left pending).
        return dg.MaterializeResult(metadata={"records_read": dg.MetadataValue.int(0)})

    def progress(summary: IngestSummary) -> None:
        context.log.info(
            f"{topic}: landed {summary.records} records so far "
            f"({summary.inserted} new, {summary.duplicates} duplicates, {summary.rejected} rejected)"
        )

    with warehouse.connect() as conn:
        summary = ingest_ranges(
            kafka.config(),
            conn,
            topic,
            planned,
            chunk_size=config.chunk_size,
            chunk_bytes=config.chunk_bytes,
            bounds=LANDING_BOUNDS,
            progress=progress,
            group_id=kafka.pipeline_group,
        )
        # The touched partitions include any a crashed run landed but did not rewrite (ops.pending_mart_partitions).
        if summary.touched_event_dates:
            rewrite_days(conn, summary.touched_event_dates)
        if summary.touched_lot_ids:
            rewrite_lots(conn, summary.touched_lot_ids, pass_threshold=warehouse.pass_threshold)
    _record_mart_partitions(context, summary)
    for warning in summary.warnings:
        context.log.warning(warning)
    if summary.rejected:
        context.log.warning(f"{summary.rejected} records rejected: see ops.rejected_events")
    if summary.gaps:
        context.log.error(
            f"{topic}: {sum(gap.records for gap in summary.gaps)} offsets were deleted from Kafka before they "
            "landed (recorded in ops.offset_gaps; `chipq gaps` lists them, `chipq gaps ack` acknowledges them)"
        )
    context.log.info(
        f"{topic}: planned {json.dumps(planned)}, read {json.dumps(summary.read)}; marts rewritten for "
        f"{len(summary.touched_event_dates)} days and {len(summary.touched_lot_ids)} lots"
    )
    return dg.MaterializeResult(metadata=ingest_metadata(summary))


@warehouse_asset(
    key=RAW_INSPECTIONS,
    deps=[KAFKA_INSPECTIONS],
    group_name="ingest",
    kinds={"kafka", "duckdb"},
    description=(
        "Inspection events from `chip-quality.inspection.events`, one row per event_id "
        "(`raw.inspection_events`, defects in `raw.defects`). Each run lands an exact offset range "
        "planned by `kafka_offsets_sensor`, rows and offsets in one transaction (undecodable or invalid "
        "records go to `ops.rejected_events` with their bytes and the reason), then rewrites the mart "
        "partitions (days, lots) the new rows touched."
    ),
)
def raw_inspection_events(
    context: dg.AssetExecutionContext, config: IngestConfig, kafka: KafkaResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Land an offset range of the inspection topic in DuckDB and bring the touched mart partitions up to date."""
    return _ingest(context, config, kafka, warehouse, kafka.inspection_topic)


@warehouse_asset(
    key=RAW_QUALITY,
    deps=[KAFKA_QUALITY],
    group_name="ingest",
    kinds={"kafka", "duckdb"},
    description=(
        "Quality events (QUALITY_ASSESSED, THRESHOLD_VIOLATED) from `chip-quality.quality.events` "
        "in `raw.quality_events`, landed like the inspection events."
    ),
)
def raw_quality_events(
    context: dg.AssetExecutionContext, config: IngestConfig, kafka: KafkaResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Land an offset range of the quality topic in DuckDB."""
    return _ingest(context, config, kafka, warehouse, kafka.quality_topic)
