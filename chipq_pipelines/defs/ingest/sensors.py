"""Offset-planner sensors: one per topic, emitting exact offset ranges as runs.

A sensor never opens DuckDB (only one process may write it). It plans from
Kafka watermarks and the offsets ingest runs committed to the pipeline group,
keeps at most one run in flight per topic, and re-plans a failed or lost run
from the committed offsets (the run re-anchors to DuckDB's landed offsets).
"""

import json
import time

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from chipq_pipelines.defs.ingest.assets import ingest_inspection_job, ingest_quality_job
from chipq_pipelines.defs.ingest.planner import TopicNotReady, plan_ranges
from chipq_pipelines.defs.resources import KafkaResource, WarehouseResource
from chipq_pipelines.events.topics import INSPECTION_TOPIC, QUALITY_TOPIC

#: A requested run that never appears for this long is considered lost and re-planned.
LOST_RUN_AFTER_S = 300.0
DEFAULT_TOPICS = {"inspection_topic": INSPECTION_TOPIC, "quality_topic": QUALITY_TOPIC}
_UNFINISHED = {
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.MANAGED,
    dg.DagsterRunStatus.CANCELING,
}


def _inflight_status(context: dg.SensorEvaluationContext, cursor: dict) -> str | None:
    """Why the topic's previous run still blocks planning, or None when it is done."""
    run_key = cursor.get("inflight")
    if not run_key:
        return None
    runs = context.instance.get_runs(dg.RunsFilter(tags={"dagster/run_key": run_key}), limit=1)
    if runs:
        status = runs[0].status
        if status in _UNFINISHED:
            return f"run {runs[0].run_id[:8]} for {run_key} is {status.value}"
        if status != dg.DagsterRunStatus.SUCCESS:
            context.log.warning(f"run {runs[0].run_id[:8]} for {run_key} ended {status.value}; re-planning")
        return None
    if time.time() - cursor.get("requested_at", 0) < LOST_RUN_AFTER_S:
        return f"run for {run_key} requested, not created yet"
    context.log.warning(f"run for {run_key} never appeared; re-planning")
    return None


def build_offset_sensor(name: str, topic_field: str, job: "UnresolvedAssetJobDefinition") -> dg.SensorDefinition:
    """An offset planner for the topic named by ``KafkaResource.<topic_field>``."""

    @dg.sensor(
        name=name,
        job=job,
        minimum_interval_seconds=10,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Plans exact offset ranges of `{DEFAULT_TOPICS[topic_field]}` from Kafka watermarks and the "
            "`chipq-dagster` group's committed offsets: at most CHIPQ_MAX_RECORDS_PER_RUN (250,000) records a run, "
            "one run in flight. The topic and group can be overridden (CHIPQ_INSPECTION_TOPIC, ...)."
        ),
    )
    def offset_sensor(
        context: dg.SensorEvaluationContext, kafka: KafkaResource, warehouse: WarehouseResource
    ) -> dg.SensorResult:
        topic = getattr(kafka, topic_field)
        cursor = json.loads(context.cursor) if context.cursor else {}
        blocked = _inflight_status(context, cursor)
        if blocked:
            return dg.SensorResult(skip_reason=blocked, cursor=context.cursor)
        seq = int(cursor.get("seq", 0))
        # The group's offsets mirror the warehouse; a missing file (deleted to start over) is re-read
        # from the start. Checking the file's existence is not opening it: sensors never open DuckDB.
        rebuild = not warehouse.warehouse_path().exists()
        try:
            ranges = plan_ranges(
                kafka.config(), topic, kafka.max_records_per_run, kafka.pipeline_group, use_committed=not rebuild
            )
        except TopicNotReady as exc:
            return dg.SensorResult(skip_reason=str(exc), cursor=json.dumps({"seq": seq}))
        if not ranges:
            return dg.SensorResult(skip_reason=f"{topic}: nothing new", cursor=json.dumps({"seq": seq}))
        seq += 1
        span = ",".join(f"{p}:{s}-{e}" for p, (s, e) in sorted(ranges.items()))
        run_key = f"{topic}|{seq}|{span}"
        request = dg.RunRequest(
            run_key=run_key,
            job_name=job.name,
            run_config={
                "ops": {
                    _asset_op_name(job): {
                        "config": {"ranges": [{"partition": p, "start": s, "end": e} for p, (s, e) in ranges.items()]}
                    }
                }
            },
            tags={"chipq/topic": topic, "chipq/records": str(sum(e - s for s, e in ranges.values()))},
        )
        new_cursor = {"seq": seq, "inflight": run_key, "requested_at": time.time()}
        return dg.SensorResult(run_requests=[request], cursor=json.dumps(new_cursor))

    return offset_sensor


def _asset_op_name(job: "UnresolvedAssetJobDefinition") -> str:
    return {ingest_inspection_job.name: "raw__inspection_events", ingest_quality_job.name: "raw__quality_events"}[
        job.name
    ]


inspection_offsets_sensor = build_offset_sensor("inspection_offsets_sensor", "inspection_topic", ingest_inspection_job)
quality_offsets_sensor = build_offset_sensor("quality_offsets_sensor", "quality_topic", ingest_quality_job)
