"""Run the alerts job whenever a mart partition was rewritten or the outbox has unsent violations.

Like every chipq sensor it never opens DuckDB: it compares the newest
materializations of the marts, the outbox and the published events in
Dagster's event log.
"""

import dagster as dg

from chipq_pipelines.defs.alerts.assets import alert_outbox, alerts_job, threshold_violation_events
from chipq_pipelines.defs.marts.assets import defect_rates, lot_quality_scores

MARKER_TAG = "chipq/alerts_marker"
_UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def _latest(instance: dg.DagsterInstance, key: dg.AssetKey) -> int:
    records = instance.fetch_materializations(key, limit=1).records
    return records[0].storage_id if records else 0


@dg.sensor(
    name="alerts_sensor",
    job=alerts_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Requests `publish_threshold_violations` after the marts change (evaluate the rules) or while "
        "evaluated violations are not yet published (a failed or crashed publish is retried)."
    ),
)
def alerts_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    instance = context.instance
    marts = max(_latest(instance, defect_rates.key), _latest(instance, lot_quality_scores.key))
    outbox = _latest(instance, alert_outbox.key)
    published = _latest(instance, threshold_violation_events.key)
    if marts <= outbox and outbox <= published:
        return dg.SensorResult(skip_reason="marts unchanged and the outbox is published")
    if instance.get_runs(dg.RunsFilter(job_name=alerts_job.name, statuses=_UNFINISHED), limit=1):
        return dg.SensorResult(skip_reason="an alerts run is in progress")
    marker = f"{marts}-{outbox}-{published}"
    # A failed run with this marker is retried under a new run key (the daemon never re-runs a key).
    failed = instance.get_runs(
        dg.RunsFilter(job_name=alerts_job.name, tags={MARKER_TAG: marker}, statuses=[dg.DagsterRunStatus.FAILURE])
    )
    request = dg.RunRequest(
        run_key=f"alerts|{marker}|{len(failed)}", job_name=alerts_job.name, tags={MARKER_TAG: marker}
    )
    return dg.SensorResult(run_requests=[request])
