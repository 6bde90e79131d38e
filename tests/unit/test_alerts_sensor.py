"""The alerts sensor: when it asks for a run, and how it backs off after failed daemon runs."""

from __future__ import annotations

import time

import dagster as dg
import pytest

from chipq_pipelines.defs.alerts.assets import alerts_job
from chipq_pipelines.defs.alerts.sensors import MARKER_TAG, alerts_sensor, retry_wait
from chipq_pipelines.defs.marts.assets import lot_quality_scores
from chipq_pipelines.runner import DRIVER_TAG


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def _evaluate(instance: dg.DagsterInstance) -> dg.SensorResult | dg.SkipReason:
    context = dg.build_sensor_context(instance=instance, sensor_name=alerts_sensor.name)
    return alerts_sensor(context)


def _fail_run(instance: dg.DagsterInstance, marker: str, **tags: str) -> None:
    run = instance.create_run_for_job(
        job_def=alerts_job.resolve(asset_graph=_graph()), tags={MARKER_TAG: marker, **tags}
    )
    instance.report_run_failed(run, "boom")


def _graph():
    from chipq_pipelines.definitions import build_defs

    return build_defs().resolve_asset_graph()


def test_no_run_while_the_marts_are_unchanged(instance) -> None:
    result = _evaluate(instance)
    assert not result.run_requests
    assert "unchanged" in (result.skip_reason.skip_message if result.skip_reason else "")


def test_a_changed_mart_asks_for_a_run_and_failed_daemon_runs_back_off(instance) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=lot_quality_scores.key))
    first = _evaluate(instance)
    assert len(first.run_requests) == 1
    marker = first.run_requests[0].tags[MARKER_TAG]

    _fail_run(instance, marker)  # the daemon's run fails: the next tick waits
    waiting = _evaluate(instance)
    assert not waiting.run_requests
    assert "retrying in" in waiting.skip_reason.skip_message

    # catch-up runs do not count toward the wait (a person retrying at once)
    with dg.instance_for_test() as other:
        other.report_runless_asset_event(dg.AssetMaterialization(asset_key=lot_quality_scores.key))
        marker_other = _evaluate(other).run_requests[0].tags[MARKER_TAG]
        _fail_run(other, marker_other, **{DRIVER_TAG: "catch-up"})
        retried = _evaluate(other)
        assert len(retried.run_requests) == 1
        assert retried.run_requests[0].run_key.endswith("|1")  # a new key: the daemon never re-runs one


def test_retry_wait_doubles_and_is_capped() -> None:
    class Record:
        def __init__(self, end: float, tags: dict[str, str] | None = None) -> None:
            self.end_time = end
            self.dagster_run = type("Run", (), {"tags": tags or {}})()

    now = time.time()
    assert retry_wait([], now) == 0
    assert retry_wait([Record(now)], now) == pytest.approx(30)
    assert retry_wait([Record(now - 100), Record(now)], now) == pytest.approx(60)
    assert retry_wait([Record(now)] * 3, now) == pytest.approx(120)
    assert retry_wait([Record(now)] * 20, now) == pytest.approx(900)
    assert retry_wait([Record(now - 31)], now) == 0
    assert retry_wait([Record(now, {DRIVER_TAG: "catch-up"})], now) == 0
