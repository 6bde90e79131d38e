"""Raw event assets: exact Kafka offset ranges landed in DuckDB, effectively once."""

import json

import dagster as dg

from chipq_pipelines.defs.ingest.reader import IngestSummary, ingest_ranges
from chipq_pipelines.defs.partitions import LANDING_BOUNDS
from chipq_pipelines.defs.resources import KafkaResource, WarehouseResource

WRITER_POOL = "duckdb_writer"
OWNER = "team:quality-analytics"


class OffsetRange(dg.Config):
    """Offsets ``start`` (inclusive) to ``end`` (exclusive) of one partition."""

    partition: int
    start: int
    end: int


class IngestConfig(dg.Config):
    """The exact ranges an ingest run reads; planned by the topic's offset sensor."""

    ranges: list[OffsetRange]
    #: A chunk (one landing transaction) ends at this many records or about this many bytes of values.
    chunk_size: int = 50_000
    chunk_bytes: int = 32 * 1024 * 1024


def ingest_metadata(summary: IngestSummary) -> dict[str, dg.MetadataValue]:
    """Run metadata; ``touched_*`` feed the mart partition sensor through the event log."""
    return {
        "records_read": dg.MetadataValue.int(summary.records),
        "events_inserted": dg.MetadataValue.int(summary.inserted),
        "duplicates_skipped": dg.MetadataValue.int(summary.duplicates),
        "rejected": dg.MetadataValue.int(summary.rejected),
        "offset_ranges": dg.MetadataValue.json({str(p): list(r) for p, r in summary.read.items()}),
        "landed_offsets": dg.MetadataValue.json({str(p): o for p, o in summary.offsets.items()}),
        "touched_event_dates": dg.MetadataValue.json(sorted(d.isoformat() for d in summary.touched_event_dates)),
        "touched_lot_ids": dg.MetadataValue.json(sorted(summary.touched_lot_ids)),
        "warnings": dg.MetadataValue.json(summary.warnings),
    }


def _ingest(
    context: dg.AssetExecutionContext,
    config: IngestConfig,
    kafka: KafkaResource,
    warehouse: WarehouseResource,
    topic: str,
) -> dg.MaterializeResult:
    planned = {r.partition: (r.start, r.end) for r in config.ranges}

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
    for warning in summary.warnings:
        context.log.warning(warning)
    if summary.rejected:
        context.log.warning(f"{summary.rejected} records rejected: see ops.rejected_events")
    context.log.info(f"{topic}: planned {json.dumps(planned)}, read {json.dumps(summary.read)}")
    return dg.MaterializeResult(metadata=ingest_metadata(summary))


@dg.asset(
    key=["raw", "inspection_events"],
    group_name="ingest",
    owners=[OWNER],
    kinds={"kafka", "duckdb"},
    pool=WRITER_POOL,
    description=(
        "Inspection events from `chip-quality.inspection.events`, one row per event_id "
        "(`raw.inspection_events`, defects in `raw.defects`). Each run lands an exact offset range "
        "planned by `inspection_offsets_sensor`, rows and offsets in one transaction; undecodable "
        "or invalid records go to `ops.rejected_events` with their bytes and the reason."
    ),
)
def raw_inspection_events(
    context: dg.AssetExecutionContext, config: IngestConfig, kafka: KafkaResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Land an offset range of the inspection topic in DuckDB."""
    return _ingest(context, config, kafka, warehouse, kafka.inspection_topic)


@dg.asset(
    key=["raw", "quality_events"],
    group_name="ingest",
    owners=[OWNER],
    kinds={"kafka", "duckdb"},
    pool=WRITER_POOL,
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


ingest_inspection_job = dg.define_asset_job("ingest_inspection_events", selection=[raw_inspection_events])
ingest_quality_job = dg.define_asset_job("ingest_quality_events", selection=[raw_quality_events])
