"""The single Definitions object of chipq (workspace.yaml points here)."""

from __future__ import annotations

import dagster as dg

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

defs = dg.Definitions(
    assets=[raw_inspection_events, raw_quality_events, defect_rates, lot_quality_scores, analyst_snapshot],
    jobs=[ingest_inspection_job, ingest_quality_job, defect_rates_job, lot_quality_job, snapshot_job],
    sensors=[inspection_offsets_sensor, quality_offsets_sensor, mart_partitions_sensor],
    schedules=[daily_defect_rates],
    resources=default_resources(),
)
