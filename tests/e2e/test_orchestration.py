"""How runs come to be: the schedules' requests, the offsets sensor's plans, the automation conditions.

Only Dagster's public test API: ``build_schedule_context``, ``build_sensor_context``,
``validate_run_config``, ``evaluate_automation_conditions`` and in-process execution.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import uuid
from typing import Any

import dagster as dg
import pytest
from confluent_kafka import Consumer, TopicPartition

from chipq_pipelines.definitions import build_defs
from chipq_pipelines.defs.cycle import RECORDS_TAG, SPAN_TAG
from chipq_pipelines.defs.ingest import assets as ingest_assets
from chipq_pipelines.defs.shared import DEFECT_RATES, LOT_QUALITY, RAW_INSPECTIONS, RAW_QUALITY
from chipq_pipelines.events.producers import SyncInspectionEventProducer
from chipq_pipelines.runner import catch_up, ensure_dagster_home

pytestmark = pytest.mark.e2e

UTC = dt.UTC
SNAPSHOT = dg.AssetKey(["analyst_snapshot"])
OUTBOX = dg.AssetKey(["ops", "alert_outbox"])
VIOLATIONS = dg.AssetKey(["ops", "threshold_violation_events"])
FOLLOWERS = (SNAPSHOT, OUTBOX, VIOLATIONS)


# ---------------------------------------------------------------- schedules (no broker needed)


@pytest.mark.parametrize(
    ("scheduled", "yesterday", "today"),
    [
        (dt.datetime(2024, 3, 10, 0, 15, tzinfo=UTC), "2024-03-09", "2024-03-10"),  # the cron time
        (dt.datetime(2024, 1, 1, 0, 0, tzinfo=UTC), "2023-12-31", "2024-01-01"),  # midnight, new year
        (dt.datetime(2024, 3, 10, 23, 59, 59, tzinfo=UTC), "2024-03-09", "2024-03-10"),  # just before midnight
        # 01:30 in UTC+2 is still the previous UTC day; 19:15 in New York is already the next one
        (dt.datetime(2024, 3, 10, 1, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))), "2024-03-08", "2024-03-09"),
        (dt.datetime(2024, 3, 9, 19, 15, tzinfo=dt.timezone(dt.timedelta(hours=-5))), "2024-03-09", "2024-03-10"),
    ],
)
def test_daily_defect_rates_requests_yesterday_and_today_in_utc(scheduled, yesterday, today) -> None:
    defs = build_defs()
    schedule = defs.resolve_schedule_def("daily_defect_rates")
    job = defs.resolve_job_def("materialize_defect_rates")
    assert schedule.job_name == job.name and schedule.cron_schedule == "15 0 * * *"

    requests = schedule(dg.build_schedule_context(scheduled_execution_time=scheduled))
    again = schedule(dg.build_schedule_context(scheduled_execution_time=scheduled))

    assert [r.partition_key for r in requests] == [yesterday, today]
    # distinct keys, the same on re-evaluation (the daemon launches a tick once), new the next day
    assert [r.run_key for r in requests] == [f"daily|{yesterday}|{today}", f"daily|{today}|{today}"]
    assert [r.run_key for r in again] == [r.run_key for r in requests]
    existing = set(job.partitions_def.get_partition_keys(current_time=scheduled))
    for request in requests:
        assert request.partition_key in existing
        dg.validate_run_config(job, request.run_config)


def test_flow_checks_schedule_requests_one_valid_run_keyed_by_its_tick() -> None:
    defs = build_defs()
    schedule = defs.resolve_schedule_def("flow_checks_schedule")
    job = defs.resolve_job_def("flow_checks")
    tick = dt.datetime(2024, 3, 10, 12, 5, tzinfo=UTC)

    request = schedule(dg.build_schedule_context(scheduled_execution_time=tick))
    following = schedule(dg.build_schedule_context(scheduled_execution_time=tick + dt.timedelta(minutes=5)))

    assert isinstance(request, dg.RunRequest) and schedule.job_name == "flow_checks"
    assert request.run_key == "flow_checks|2024-03-10T12:05:00+00:00"
    assert following.run_key == "flow_checks|2024-03-10T12:10:00+00:00"
    assert dg.validate_run_config(job, request.run_config)["ops"]  # the checks' config, defaults filled in


# ---------------------------------------------------------------- the offsets sensor (real broker)


def _events(count: int, when: dt.datetime) -> list[dict[str, Any]]:
    lot = f"LOT-{uuid.uuid4().hex[:6]}"
    common = {"event_type": "INSPECTION_COMPLETED", "batch_id": lot, "inspection_type": "optical"}
    return [
        {
            **common,
            "event_id": str(uuid.uuid4()),
            "event_time": when + dt.timedelta(seconds=i),
            "inspection_id": f"{lot}/I{i}",
            "chip_id": f"{lot}/C{i}",
            **{"status": "completed", "quality_score": 0.95, "defects": [], "metadata": {}},
        }
        for i in range(count)
    ]


def _publish(env, events: list[dict[str, Any]]) -> None:
    with SyncInspectionEventProducer(env.kafka_config, topic=env.inspection_topic) as producer:
        producer.publish_batch(events, key_fn=lambda e: e["inspection_id"])


def _high_watermarks(env) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": env.bootstrap, "group.id": "watermarks"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(env.inspection_topic, p), timeout=10)[1] for p in range(3)
        }
    finally:
        consumer.close()


def _plan(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.SensorResult:
    """One evaluation of the offsets sensor, as the daemon and `chipq catch-up` make it."""
    with dg.build_sensor_context(
        instance=instance, definitions=defs, sensor_name="kafka_offsets_sensor", resources=defs.resources
    ) as context:
        return defs.resolve_sensor_def("kafka_offsets_sensor")(context)


def _execute(defs: dg.Definitions, instance: dg.DagsterInstance, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """Execute a requested cycle in process with its config, tags and run key (as `chipq catch-up` does)."""
    tags = {**request.tags, "dagster/run_key": request.run_key}
    job = defs.resolve_job_def("pipeline_cycle")
    return job.execute_in_process(run_config=request.run_config, instance=instance, tags=tags, raise_on_error=False)


def test_offsets_sensor_skips_when_nothing_is_published(pipeline_env) -> None:
    ensure_dagster_home()
    with dg.DagsterInstance.get() as instance:
        result = _plan(build_defs(), instance)
    assert result.run_requests == [] or result.run_requests is None
    assert result.skip_reason is not None and result.skip_reason.skip_message == "nothing new on either topic"


def test_offsets_sensor_plans_one_cycle_per_span_and_a_new_key_per_attempt(pipeline_env) -> None:
    _publish(pipeline_env, _events(12, dt.datetime.now(UTC) - dt.timedelta(hours=1)))
    high = _high_watermarks(pipeline_env)
    assert sum(high.values()) == 12
    span = f"{pipeline_env.inspection_topic}:" + ",".join(f"{p}:0-{e}" for p, e in sorted(high.items()) if e)
    ensure_dagster_home()
    defs = build_defs()
    with dg.DagsterInstance.get() as instance:
        first, again = _plan(defs, instance), _plan(defs, instance)
        [request] = first.run_requests
        ranges = request.run_config["ops"]["raw__inspection_events"]["config"]["ranges"]
        assert {r["partition"]: (r["start"], r["end"]) for r in ranges} == {p: (0, e) for p, e in high.items() if e}
        assert request.run_config["ops"]["raw__quality_events"]["config"]["ranges"] == []
        assert request.tags[SPAN_TAG] == span and request.tags[RECORDS_TAG] == "12"
        assert request.run_key == f"{span}#0"
        dg.validate_run_config(defs.resolve_job_def("pipeline_cycle"), request.run_config)
        # No run yet: the same plan and key again, so the daemon never launches the span twice.
        assert [(r.run_key, r.run_config, r.tags) for r in again.run_requests] == [
            (request.run_key, request.run_config, request.tags)
        ]

        # The attempt fails: another process holds the DuckDB write lock, so neither step can open the warehouse.
        holder = subprocess.Popen(
            [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('locked', flush=True)"
             "; sys.stdin.read()", str(pipeline_env.warehouse)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            failed = _execute(defs, instance, request)
        finally:
            holder.communicate("", timeout=30)
        assert not failed.success
        errors = [event.step_failure_data.error.to_string() for event in failed.get_step_failure_events()]
        assert errors and all("lock" in message for message in errors), errors
        assert instance.get_run_by_id(failed.run_id).status == dg.DagsterRunStatus.FAILURE

        retry = _plan(defs, instance)
        [second] = retry.run_requests
        assert second.run_key == f"{span}#1"  # a run key is used once: the failed span gets a new one
        assert (second.run_config, second.tags) == (request.run_config, request.tags)


def _inspection_ranges(request: dg.RunRequest) -> dict[int, tuple[int, int]]:
    ranges = request.run_config["ops"]["raw__inspection_events"]["config"]["ranges"]
    return {r["partition"]: (r["start"], r["end"]) for r in ranges}


def test_while_a_cycle_runs_the_next_is_planned_from_where_it_ends(pipeline_env, monkeypatch) -> None:
    _publish(pipeline_env, _events(5, dt.datetime.now(UTC) - dt.timedelta(hours=1)))
    ensure_dagster_home()
    defs = build_defs()
    seen: list[dg.SensorResult] = []
    real_ingest = ingest_assets.ingest_ranges

    def ingest_observed(*args: Any, **kwargs: Any) -> Any:
        if not seen:  # the first step of the run: the run is STARTED and logging
            seen.append(_plan(defs, instance))  # nothing beyond it yet
            _publish(pipeline_env, _events(4, dt.datetime.now(UTC)))
            seen.append(_plan(defs, instance))  # the next cycle, from the running one's ends
        return real_ingest(*args, **kwargs)

    monkeypatch.setattr(ingest_assets, "ingest_ranges", ingest_observed)
    with dg.DagsterInstance.get() as instance:
        [request] = _plan(defs, instance).run_requests
        result = _execute(defs, instance, request)
        ends = _high_watermarks(pipeline_env)
        [queued] = _plan(defs, instance).run_requests  # the same plan once the first has landed
    assert result.success
    idle, busy = seen
    assert not idle.run_requests
    assert idle.skip_reason.skip_message == f"nothing new on either topic beyond run {result.run_id[:8]} (STARTED)"
    [next_request] = busy.run_requests
    first = _inspection_ranges(request)
    following = _inspection_ranges(next_request)
    assert {p: start for p, (start, _) in following.items()} == {p: first.get(p, (0, 0))[1] for p in following}
    assert sum(end - start for start, end in following.values()) == 4
    assert {p: end for p, (_, end) in following.items()} == {p: e for p, e in ends.items() if p in following}
    assert _inspection_ranges(queued) == following and queued.run_key == next_request.run_key


# ---------------------------------------------------------------- declarative automation


def _requested(result: dg.EvaluateAutomationConditionsResult) -> dict[str, set[str | None]]:
    keys = (*FOLLOWERS, RAW_INSPECTIONS, RAW_QUALITY, DEFECT_RATES, LOT_QUALITY)
    return {k.to_user_string(): set(result.get_requested_partitions(k)) for k in keys if result.get_num_requested(k)}


@pytest.mark.filterwarnings("ignore::dagster.BetaWarning")  # raised inside evaluate_automation_conditions
def test_alerts_and_snapshot_follow_a_mart_change_outside_the_cycle_once(pipeline_env) -> None:
    when = dt.datetime.now(UTC) - dt.timedelta(hours=1)
    _publish(pipeline_env, _events(8, when))
    ensure_dagster_home()
    defs = build_defs()
    with dg.DagsterInstance.get() as instance:
        # The first evaluation only sets the baseline: `newly_updated` has no previous tick to compare with
        # (it is empty), and `initial_evaluation` resets every `since_last_handled`, so nothing that happened
        # before it could ever be requested. It is made before the cycle, so that the next one is a real test.
        baseline = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert baseline.total_requested == 0

        report = catch_up(defs=defs, echo=print, instance=instance)
        assert report.events_inserted == 8
        assert report.partitions["marts/defect_rates"] == {when.date().isoformat()}
        cycle_runs = {instance.get_latest_materialization_event(k).run_id for k in FOLLOWERS}
        assert len(cycle_runs) == 1  # alerts and snapshot were materialized in the cycle run itself

        # The marts changed in a run that then ran their followers: nothing to do. (In-process runs record no
        # asset selection, so `executed_with_root_target` does not apply; what holds is `since`'s timing: each
        # follower's own materialization, the "handled" reset, is later than its deps' in the same run.)
        after_cycle = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=baseline.cursor)
        assert _requested(after_cycle) == {}
        assert after_cycle.total_requested == 0

        # The daily schedule (or a backfill, or the UI) rewrites a day outside the cycle ...
        day = when.date().isoformat()
        marts = defs.resolve_job_def("materialize_defect_rates").execute_in_process(
            instance=instance, partition_key=day
        )
        assert marts.success
        changed = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=after_cycle.cursor)
        # ... so the alerts and the analysts' view follow, once each; nothing upstream is requested.
        assert _requested(changed) == {k.to_user_string(): {None} for k in FOLLOWERS}
        assert changed.total_requested == 3

        # Requested counts as handled: the next tick requests nothing new.
        later = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=changed.cursor)
        assert _requested(later) == {}
        assert later.total_requested == 0
