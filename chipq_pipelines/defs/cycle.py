"""The pipeline cycle: one run lands what is new on both topics, rewrites the marts it touched,
evaluates and publishes the alerts, and brings the analysts' view up to date.

``kafka_offsets_sensor`` plans it. It keeps no cursor: what it needs is in
Kafka (watermarks, the ``chipq-dagster`` group's committed offsets, which
mirror what DuckDB landed) and in the Dagster instance (runs in progress,
earlier attempts of the same ranges). So the daemon and ``chipq catch-up``
(which evaluates this same sensor) can take turns on one stream. Why the
planning is hand-written: Dagster has no notion of Kafka offsets; a run key
per exact range is what makes a range land once per attempt.

One run per cycle, because under the daemon every run costs seconds before its
first step (a queued run is dequeued, a process starts and loads the code):
five runs per cycle (ingest, two marts, alerts, snapshot) kept new events
out of the analysts' view for about a minute.
"""

from __future__ import annotations

import time

import dagster as dg

from chipq_pipelines.defs.alerts.assets import alert_outbox, threshold_violation_events
from chipq_pipelines.defs.ingest.assets import raw_inspection_events, raw_quality_events
from chipq_pipelines.defs.marts.assets import analyst_snapshot
from chipq_pipelines.defs.resources import KafkaResource, WarehouseResource
from chipq_pipelines.defs.shared import RAW_INSPECTIONS, RAW_QUALITY
from chipq_pipelines.ingest.planner import TopicNotReady, plan_ranges

#: A run in progress that logged nothing for this long is taken as lost (its process died) and re-planned;
#: if it was alive after all, landing rolls back its stale range (the offsets no longer match).
LOST_RUN_AFTER_S = 300.0
SPAN_TAG = "chipq/offsets"
RECORDS_TAG = "chipq/records"
_UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
#: step (asset op) name → the KafkaResource field naming its topic
_STEPS = {"raw__inspection_events": "inspection_topic", "raw__quality_events": "quality_topic"}
_ASSETS = {"raw__inspection_events": RAW_INSPECTIONS, "raw__quality_events": RAW_QUALITY}

pipeline_cycle = dg.define_asset_job(
    "pipeline_cycle",
    selection=[raw_inspection_events, raw_quality_events, alert_outbox, threshold_violation_events, analyst_snapshot],
    description=(
        "Land the planned offset ranges of both topics (and rewrite the mart partitions they touched), "
        "evaluate the rules and publish new violations, then bring the analysts' view up to date."
    ),
)


def _in_flight(context: dg.SensorEvaluationContext) -> list[dg.DagsterRun]:
    """The cycles queued or running (a run that logged nothing for LOST_RUN_AFTER_S is taken as lost)."""
    alive = []
    for record in context.instance.get_run_records(
        dg.RunsFilter(job_name=pipeline_cycle.name, statuses=_UNFINISHED), limit=5
    ):
        run = record.dagster_run
        events = context.instance.get_records_for_run(run.run_id, limit=1, ascending=False).records
        last = events[0].timestamp if events else record.create_timestamp.timestamp()
        if time.time() - last < LOST_RUN_AFTER_S:
            alive.append(run)
        else:
            context.log.warning(f"run {run.run_id[:8]} logged nothing for {LOST_RUN_AFTER_S:.0f} s; re-planning")
    return alive


def _reported_landed(context: dg.SensorEvaluationContext, asset_key: dg.AssetKey) -> dict[int, int]:
    """partition → next offset, as the newest ingest of ``asset_key`` reported it (none: no hint).

    Only the newest: an older one may describe a warehouse deleted since (a rebuild), whose
    offsets would make the planner pass over records the new warehouse has not landed.
    """
    records = context.instance.fetch_materializations(asset_key, limit=1, ascending=False).records
    materialization = records[0].asset_materialization if records else None
    landed = materialization.metadata.get("landed_offsets") if materialization else None
    if landed is None or not isinstance(landed.value, dict):
        return {}
    return {int(p): int(o) for p, o in landed.value.items()}


def _planned_ends(run: dg.DagsterRun, step: str) -> dict[int, int]:
    """partition → end of the range ``run`` was planned to read in ``step``."""
    ranges = run.run_config.get("ops", {}).get(step, {}).get("config", {}).get("ranges", [])
    return {int(r["partition"]): int(r["end"]) for r in ranges}


@dg.sensor(
    job=pipeline_cycle,
    minimum_interval_seconds=1,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Plans exact offset ranges of the inspection and quality topics from Kafka watermarks and the "
        "`chipq-dagster` group's committed offsets (at most CHIPQ_MAX_RECORDS_PER_RUN records a topic), "
        "one pipeline_cycle run in flight and the next one queued. No cursor: `chipq catch-up` evaluates the "
        "same sensor."
    ),
)
def kafka_offsets_sensor(
    context: dg.SensorEvaluationContext, kafka: KafkaResource, warehouse: WarehouseResource
) -> dg.SensorResult:
    # One cycle running and the next one waiting in the queue, planned from where the running one
    # ends: the next starts the moment the writer slot is free, not one sensor tick later.
    in_flight = _in_flight(context)
    if len(in_flight) >= 2:
        names = ", ".join(f"{run.run_id[:8]} ({run.status.value})" for run in in_flight)
        return dg.SensorResult(skip_reason=f"runs {names} are in flight; the next is planned when one ends")
    # The group's offsets mirror the warehouse; a missing file (deleted to start over) is read from the
    # start. Checking that the file exists is not opening it: sensors never open DuckDB.
    rebuild = not warehouse.warehouse_path().exists()
    ops_config: dict[str, dict] = {}
    spans: list[str] = []
    records = 0
    for step, topic_field in _STEPS.items():
        topic = getattr(kafka, topic_field)
        try:
            ranges = plan_ranges(
                kafka.config(),
                topic,
                kafka.max_records_per_run,
                kafka.pipeline_group,
                use_committed=not rebuild,
                after=_planned_ends(in_flight[0], step) if in_flight else None,
                landed=None if rebuild else _reported_landed(context, _ASSETS[step]),
            )
        except TopicNotReady as exc:
            context.log.info(str(exc))
            ranges = {}
        planned = [{"partition": p, "start": s, "end": e} for p, (s, e) in ranges.items()]
        ops_config[step] = {"config": {"ranges": planned}}
        if ranges:
            records += sum(e - s for s, e in ranges.values())
            spans.append(f"{topic}:" + ",".join(f"{p}:{s}-{e}" for p, (s, e) in sorted(ranges.items())))
    if not spans:
        busy = f" beyond run {in_flight[0].run_id[:8]} ({in_flight[0].status.value})" if in_flight else ""
        return dg.SensorResult(skip_reason=f"nothing new on either topic{busy}")
    span = " ".join(spans)
    # A range tried before (its run failed or was lost) gets a new key: a run key is only ever used once.
    attempt = len(context.instance.get_run_ids(dg.RunsFilter(job_name=pipeline_cycle.name, tags={SPAN_TAG: span})))
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"{span}#{attempt}",
                run_config={"ops": ops_config},
                tags={SPAN_TAG: span, RECORDS_TAG: str(records)},
            )
        ]
    )


automation = dg.AutomationConditionSensorDefinition(
    "automation",
    target=dg.AssetSelection.all(),
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
    run_tags={"dagster/max_retries": "2"},
    description=(
        "Evaluates the assets' automation conditions: when something other than a pipeline cycle changes "
        "a mart (the daily schedule, a backfill, the UI), the alerts and the analysts' view follow."
    ),
)
