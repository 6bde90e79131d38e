"""Run the alerts job whenever a mart partition was rewritten or the outbox has unsent violations.

Like every chipq sensor it never opens DuckDB: it compares the newest
materializations of the marts, the outbox and the published events in
Dagster's event log.
"""

import time

import dagster as dg

from chipq_pipelines.defs.alerts.assets import alert_outbox, alerts_job, threshold_violation_events
from chipq_pipelines.defs.marts.assets import defect_rates, lot_quality_scores
from chipq_pipelines.runner import DRIVER_TAG  # runs `chipq catch-up` executed: a person retrying does not wait

MARKER_TAG = "chipq/alerts_marker"
#: Retry waits after failed daemon runs of the same work: 30 s, 60 s, 120 s, ... at most 15 minutes.
FIRST_RETRY_S = 30.0
MAX_RETRY_S = 900.0
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
    # A failed run with this marker is retried under a new run key (the daemon never re-runs a key),
    # after a wait that doubles with each failed daemon run (a broken rule or broker is not hammered).
    failed = instance.get_run_records(
        dg.RunsFilter(job_name=alerts_job.name, tags={MARKER_TAG: marker}, statuses=[dg.DagsterRunStatus.FAILURE])
    )
    wait = retry_wait(failed)
    if wait > 0:
        return dg.SensorResult(
            skip_reason=f"{len(failed)} alerts run(s) failed on this work; retrying in {wait:.0f} s "
            "(see the failed run's logs; `chipq catch-up` retries at once)"
        )
    request = dg.RunRequest(
        run_key=f"alerts|{marker}|{len(failed)}", job_name=alerts_job.name, tags={MARKER_TAG: marker}
    )
    return dg.SensorResult(run_requests=[request])


def retry_wait(failed: list[dg.RunRecord], now: float | None = None) -> float:
    """Seconds to wait before retrying work whose runs ``failed`` (0: go ahead)."""
    by_daemon = [r for r in failed if r.dagster_run.tags.get(DRIVER_TAG) != "catch-up"]
    if not by_daemon:
        return 0.0
    backoff = min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** (len(by_daemon) - 1))
    last_end = max((r.end_time or r.update_timestamp.timestamp()) for r in by_daemon)
    return max(0.0, last_end + backoff - (time.time() if now is None else now))
