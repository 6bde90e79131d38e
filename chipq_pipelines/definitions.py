"""The single Definitions object of chipq (workspace.yaml points here)."""

from __future__ import annotations

import dagster as dg

from chipq_pipelines.defs.alerts.assets import alert_outbox, alerts_job, threshold_violation_events
from chipq_pipelines.defs.alerts.sensors import alerts_sensor
from chipq_pipelines.defs.checks.checks import (
    e2e_flow_probe,
    flow_checks,
    flow_checks_job,
    flow_checks_schedule,
    mart_checks,
)
from chipq_pipelines.defs.ingest.assets import (
    ingest_inspection_job,
    ingest_quality_job,
    raw_inspection_events,
    raw_quality_events,
)
from chipq_pipelines.defs.ingest.sensors import inspection_offsets_sensor, quality_offsets_sensor
from chipq_pipelines.defs.marts.assets import (
    analyst_snapshot,
    defect_rates,
    defect_rates_job,
    lot_quality_job,
    lot_quality_scores,
    snapshot_job,
)
from chipq_pipelines.defs.marts.schedules import daily_defect_rates
from chipq_pipelines.defs.marts.sensors import mart_partitions_sensor
from chipq_pipelines.defs.resources import default_resources

ASSETS = [
    raw_inspection_events,
    raw_quality_events,
    defect_rates,
    lot_quality_scores,
    analyst_snapshot,
    alert_outbox,
    threshold_violation_events,
    e2e_flow_probe,
]
ASSET_CHECKS: list[dg.AssetChecksDefinition] = [*mart_checks, *flow_checks]
JOBS = [
    ingest_inspection_job,
    ingest_quality_job,
    defect_rates_job,
    lot_quality_job,
    snapshot_job,
    alerts_job,
    flow_checks_job,
]
SENSORS = [inspection_offsets_sensor, quality_offsets_sensor, mart_partitions_sensor, alerts_sensor]
SCHEDULES = [daily_defect_rates, flow_checks_schedule]


def build_defs() -> dg.Definitions:
    """The Definitions with resources bound to the current environment (tests call it after setting env)."""
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=ASSET_CHECKS,
        jobs=JOBS,
        sensors=SENSORS,
        schedules=SCHEDULES,
        resources=default_resources(),
        # Steps of a run share one process: they take turns on the single DuckDB
        # writer anyway, and a process per step (Dagster's default) costs ~2 s
        # of start-up each, which made a mart run with its two checks take ~10 s.
        executor=dg.in_process_executor,
    )


defs = build_defs()
