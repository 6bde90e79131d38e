"""Asset checks that prove the flow, and the probe asset that carries the end-to-end ones.

- Data quality (blocking) on both marts: runs in every mart partition run,
  scoped to that run's partitions (one, or the contiguous range it rewrote); in the
  scheduled check job, to the recent window (``recent_days``), never all history.
- Freshness on both marts: no partition behind its raw rows for longer than allowed
  (same scopes).
- On ``ops/e2e_flow_probe`` (materialized on a schedule, never by catch-up): the
  canary SLA, Kafka high watermarks vs landed offsets, and raw vs mart counts
  (the recent window's lots).

Every check's metadata says what it compared, over which scope, and the numbers.
"""

import datetime as dt

import dagster as dg
import pandas as pd
from pydantic import Field

from chipq_pipelines.checks import flow
from chipq_pipelines.checks.quality import (
    DAY_PROBLEMS,
    LOT_PROBLEMS,
    RECENT_DAYS,
    Scope,
    check_defect_rates,
    check_lot_quality,
    day_scope,
    lot_scope,
    measure_freshness,
    offenders,
)
from chipq_pipelines.defs.marts.assets import defect_rates, lot_quality_scores
from chipq_pipelines.defs.partitions import lot_id_from_partition_key
from chipq_pipelines.defs.resources import KafkaResource, WarehouseResource
from chipq_pipelines.defs.shared import warehouse_asset, warehouse_check


class RecentWindowConfig(dg.Config):
    """Which partitions a check covers when its run has none (the scheduled ``flow_checks`` job)."""

    recent_days: int = Field(
        default=RECENT_DAYS,
        ge=0,
        description=(
            "Unpartitioned runs check the UTC days from today minus this many on (and the lots with rows "
            "on them), not all history; partitioned runs check exactly their partitions."
        ),
    )


def _partition_keys(context: dg.AssetCheckExecutionContext) -> list[str] | None:
    """The run's partition keys (one, or every key of its range); None in an unpartitioned run."""
    if context.has_partition_key or context.has_partition_key_range:
        return list(context.partition_keys)
    return None


def _lot_ids(context: dg.AssetCheckExecutionContext) -> list[str] | None:
    keys = _partition_keys(context)
    return None if keys is None else [lot_id_from_partition_key(key) for key in keys]


def _day_scope(context: dg.AssetCheckExecutionContext, recent_days: int) -> Scope:
    keys = _partition_keys(context)
    return day_scope(None if keys is None else [dt.date.fromisoformat(key) for key in keys], recent_days)


def _quality_result(
    counts: dict[str, int], problems: tuple[str, ...], scope: str, named: list[dict] | None = None
) -> dg.AssetCheckResult:
    found = {k: counts[k] for k in problems if counts[k]}
    metadata = {k: dg.MetadataValue.int(v) for k, v in counts.items()}
    metadata["scope"] = dg.MetadataValue.text(scope)
    if named:  # which partitions, which problem, and an event id to look each one up by
        metadata["offending_rows"] = dg.MetadataValue.md(pd.DataFrame(named[:50]).to_markdown(index=False))
    metadata["compared"] = dg.MetadataValue.text(
        "duplicate event ids, scores and confidences within [0, 1], null/blank lot ids, mart ratios within [0, 1]"
    )
    return dg.AssetCheckResult(
        passed=not found,
        metadata=metadata,
        description=("problems: " + ", ".join(f"{k}={v}" for k, v in found.items())) if found else "clean",
    )


@warehouse_check(
    asset=lot_quality_scores,
    name="lot_quality_data_quality",
    blocking=True,
    description=(
        "Blocking: no duplicate event ids, quality scores and defect confidences within [0, 1], no null or "
        "blank lot ids, mean/min score and pass_rate within [0, 1] (the run's lots, or the recent window's)."
    ),
)
def lot_quality_data_quality(
    context: dg.AssetCheckExecutionContext, config: RecentWindowConfig, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    with warehouse.connect() as conn:
        scope = lot_scope(conn, _lot_ids(context), config.recent_days)
        counts = check_lot_quality(conn, scope)
        named = offenders(conn, "lots", scope) if any(counts[k] for k in LOT_PROBLEMS) else None
    return _quality_result(counts, LOT_PROBLEMS, scope.label, named)


@warehouse_check(
    asset=defect_rates,
    name="defect_rates_data_quality",
    blocking=True,
    description=(
        "Blocking: no duplicate event ids, quality scores and defect confidences within [0, 1], no null or "
        "blank lot ids, defect_rate within [0, 1] (the run's days, or the recent window)."
    ),
)
def defect_rates_data_quality(
    context: dg.AssetCheckExecutionContext, config: RecentWindowConfig, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    scope = _day_scope(context, config.recent_days)
    with warehouse.connect() as conn:
        counts = check_defect_rates(conn, scope)
        named = offenders(conn, "days", scope) if any(counts[k] for k in DAY_PROBLEMS) else None
    return _quality_result(counts, DAY_PROBLEMS, scope.label, named)


class FreshnessConfig(RecentWindowConfig):
    """How long a mart partition may stay behind newly landed raw rows."""

    max_lag_seconds: float = 600.0


def _freshness_result(measured: dict, config: FreshnessConfig, what: str, scope: Scope) -> dg.AssetCheckResult:
    stale = int(measured["partitions_stale"])
    metadata = {
        "compared": dg.MetadataValue.text(f"newest landed raw row per {what} vs the mart's updated_at"),
        "scope": dg.MetadataValue.text(scope.label),
        "max_lag_seconds": dg.MetadataValue.float(config.max_lag_seconds),
        "partitions_with_data": dg.MetadataValue.int(int(measured["partitions_with_data"])),
        "partitions_behind": dg.MetadataValue.int(int(measured["partitions_behind"])),
        "partitions_stale": dg.MetadataValue.int(stale),
        "oldest_behind_seconds": dg.MetadataValue.float(float(measured["oldest_behind_seconds"])),
        "newest_mart_update": dg.MetadataValue.text(str(measured["newest_mart_update"])),
        "newest_landed": dg.MetadataValue.text(str(measured["newest_landed"])),
        "examples": dg.MetadataValue.json(list(measured["examples"] or [])),
    }
    description = (
        f"{stale} {what}s behind their raw rows for more than {config.max_lag_seconds:g} s" if stale else "fresh"
    )
    return dg.AssetCheckResult(passed=stale == 0, metadata=metadata, description=description)


@warehouse_check(
    asset=lot_quality_scores,
    name="lot_quality_freshness",
    description="No lot's mart row older than its newest landed completed event by more than max_lag_seconds.",
)
def lot_quality_freshness(
    context: dg.AssetCheckExecutionContext, config: FreshnessConfig, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    with warehouse.connect() as conn:
        scope = lot_scope(conn, _lot_ids(context), config.recent_days)
        measured = measure_freshness(conn, "lots", config.max_lag_seconds, scope)
    return _freshness_result(measured, config, "lot", scope)


@warehouse_check(
    asset=defect_rates,
    name="defect_rates_freshness",
    description="No day's defect rates older than its newest landed completed event by more than max_lag_seconds.",
)
def defect_rates_freshness(
    context: dg.AssetCheckExecutionContext, config: FreshnessConfig, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    scope = _day_scope(context, config.recent_days)
    with warehouse.connect() as conn:
        measured = measure_freshness(conn, "days", config.max_lag_seconds, scope)
    return _freshness_result(measured, config, "day", scope)


# ---------------------------------------------------------------- end to end


@warehouse_asset(
    key=["ops", "e2e_flow_probe"],
    group_name="flow_checks",
    kinds={"kafka", "duckdb"},
    description=(
        "End-to-end probe: publishes one canary INSPECTION_COMPLETED (metadata chipq_canary = 'true', lot "
        f"`{flow.CANARY_LOT_ID}`) to the inspection topic and records it in `ops.canaries`. Its checks verify "
        "the previous canary's trip, Kafka vs landed offsets, and raw vs mart counts."
    ),
)
def e2e_flow_probe(
    context: dg.AssetExecutionContext, kafka: KafkaResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Publish a canary; the next evaluation of ``canary_within_sla`` verifies it landed."""
    with warehouse.connect() as conn:
        canary = flow.publish_canary(kafka.config(), kafka.inspection_topic, conn, context.run.run_id)
    context.log.info(f"canary {canary['event_id']} published at offset {canary['kafka_offset']}")
    return dg.MaterializeResult(
        metadata={
            "canary_event_id": dg.MetadataValue.text(canary["event_id"]),
            "topic": dg.MetadataValue.text(kafka.inspection_topic),
            "kafka_partition": dg.MetadataValue.int(canary["kafka_partition"]),
            "kafka_offset": dg.MetadataValue.int(canary["kafka_offset"]),
        }
    )


class CanaryConfig(dg.Config):
    """The end-to-end SLA: a canary must land in raw within this many seconds of its publication."""

    sla_seconds: float = 120.0


@warehouse_check(
    asset=e2e_flow_probe,
    name="canary_within_sla",
    description="The previous canary landed in raw.inspection_events within the SLA and no mart counts it.",
)
def canary_within_sla(
    context: dg.AssetCheckExecutionContext, config: CanaryConfig, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    with warehouse.connect() as conn:
        verdict = flow.judge_canaries(conn, context.op_execution_context.run_id, config.sla_seconds)
    metadata = {"compared": dg.MetadataValue.text("canary publish time vs raw ingested_at, against the SLA")}
    metadata |= {k: dg.MetadataValue.text(str(v)) for k, v in verdict.detail.items()}
    metadata["sla_seconds"] = dg.MetadataValue.float(config.sla_seconds)
    return dg.AssetCheckResult(passed=verdict.passed, description=verdict.status, metadata=metadata)


class OffsetsConfig(dg.Config):
    """A partition fails when its oldest record not yet landed is older than this (ingest stopped)."""

    max_stall_seconds: float = 300.0


@warehouse_check(
    asset=e2e_flow_probe,
    name="kafka_offsets_reconciled",
    description=(
        "Per topic partition, Kafka's watermarks vs the landed offset in ops.ingested_offsets. Fails (ERROR) "
        "while records deleted before landing are not acknowledged (ops.offset_gaps; `chipq gaps ack`), on an "
        "offset landed beyond the watermark, or on records waiting longer than max_stall_seconds; fails (WARN) "
        "when the chipq-dagster group's committed offsets lag the landed ones (offset commits failing)."
    ),
)
def kafka_offsets_reconciled(
    config: OffsetsConfig, kafka: KafkaResource, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    topics = [kafka.inspection_topic, kafka.quality_topic]
    with warehouse.connect() as conn:
        gaps = flow.unacknowledged_gaps(conn)
        rows = flow.kafka_offsets(kafka.config(), conn, topics, config.max_stall_seconds, kafka.pipeline_group, gaps)
    bad = [r for r in rows if r["verdict"] != "ok"]
    lost = [r for r in bad if r["verdict"] in flow.LOSS_VERDICTS]
    table = pd.DataFrame(rows)
    verdicts = sorted({r["verdict"] for r in bad})
    metadata = {
        "compared": dg.MetadataValue.text(
            "Kafka watermarks vs ops.ingested_offsets.next_offset vs the pipeline group's committed offsets"
        ),
        "total_lag": dg.MetadataValue.int(int(sum(r["lag"] for r in rows))),
        "partitions": dg.MetadataValue.int(len(rows)),
        "partitions_failing": dg.MetadataValue.int(len(bad)),
        "unacknowledged_gap_records": dg.MetadataValue.int(int(sum(g["records"] for g in gaps))),
        "max_stall_seconds": dg.MetadataValue.float(config.max_stall_seconds),
        "offsets": dg.MetadataValue.md(table.to_markdown(index=False) if len(table) else "no partitions"),
    }
    if gaps:
        metadata["offset_gaps"] = dg.MetadataValue.md(pd.DataFrame(gaps).to_markdown(index=False))
    return dg.AssetCheckResult(
        passed=not bad,
        severity=dg.AssetCheckSeverity.ERROR if lost or not bad else dg.AssetCheckSeverity.WARN,
        description=(
            f"{len(bad)} partitions not reconciled: {', '.join(verdicts)}"
            if bad
            else "every partition landed up to its lag"
        ),
        metadata=metadata,
    )


class CountsConfig(RecentWindowConfig):
    """Lots whose newest event landed within this many seconds are in flight and not compared."""

    settle_seconds: float = 600.0


@warehouse_check(
    asset=e2e_flow_probe,
    name="raw_marts_reconciled",
    description=(
        "Per settled lot of the recent window (lots with rows on the last recent_days UTC days), distinct "
        "completed inspections in raw vs inspections_completed in marts.lot_quality_scores, and the totals."
    ),
)
def raw_marts_reconciled(config: CountsConfig, warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.connect() as conn:
        counts = flow.raw_vs_lot_mart(conn, config.settle_seconds, config.recent_days)
    mismatched = counts["lots_mismatched"]
    metadata = {k: dg.MetadataValue.int(v) for k, v in counts.items() if isinstance(v, int)}
    metadata["examples"] = dg.MetadataValue.json(counts["examples"])
    metadata["scope"] = dg.MetadataValue.text(counts["scope"])
    metadata["compared"] = dg.MetadataValue.text(
        "raw completed inspections (distinct per lot) vs sum of inspections_completed over lots"
    )
    metadata["settle_seconds"] = dg.MetadataValue.float(config.settle_seconds)
    return dg.AssetCheckResult(
        passed=mismatched == 0,
        metadata=metadata,
        description=f"{mismatched} lots differ between raw and the mart" if mismatched else "raw and marts agree",
    )


mart_checks = [lot_quality_data_quality, defect_rates_data_quality, lot_quality_freshness, defect_rates_freshness]
flow_checks = [canary_within_sla, kafka_offsets_reconciled, raw_marts_reconciled]

flow_checks_job = dg.define_asset_job(
    "flow_checks",
    selection=dg.AssetSelection.assets(e2e_flow_probe) | dg.AssetSelection.checks(*mart_checks),
    description="Publish a canary and run every flow check: canary SLA, reconciliation, data quality, freshness.",
)


@dg.schedule(
    name="flow_checks_schedule",
    cron_schedule="*/5 * * * *",
    job=flow_checks_job,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every 5 minutes: a new canary, and the checks of the previous one and of the marts.",
)
def flow_checks_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return dg.RunRequest(run_key=f"flow_checks|{context.scheduled_execution_time.isoformat()}")
