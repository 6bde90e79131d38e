"""Each flow check passes on a healthy pipeline and fails when its condition is broken on purpose."""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from typing import Any

import dagster as dg
import pytest

from chipq_pipelines.definitions import build_defs
from chipq_pipelines.events.producers import SyncInspectionEventProducer
from chipq_pipelines.runner import catch_up, ensure_dagster_home
from chipq_pipelines.warehouse.schema import connect

pytestmark = pytest.mark.e2e

CHECK_OPS = {
    "canary_within_sla": "ops__e2e_flow_probe_canary_within_sla",
    "kafka_offsets_reconciled": "ops__e2e_flow_probe_kafka_offsets_reconciled",
    "raw_marts_reconciled": "ops__e2e_flow_probe_raw_marts_reconciled",
    "lot_quality_freshness": "marts__lot_quality_scores_lot_quality_freshness",
    "defect_rates_freshness": "marts__defect_rates_defect_rates_freshness",
}
HEALTHY = {
    "canary_within_sla": {"sla_seconds": 120.0},
    "kafka_offsets_reconciled": {"max_stall_seconds": 600.0},
    "raw_marts_reconciled": {"settle_seconds": 0.0},
    "lot_quality_freshness": {"max_lag_seconds": 0.0},
    "defect_rates_freshness": {"max_lag_seconds": 0.0},
}


def _events(prefix: str, lots: int = 3, chips: int = 10) -> list[dict[str, Any]]:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    return [
        {
            "event_id": str(uuid.uuid4()),
            "event_type": "INSPECTION_COMPLETED",
            "event_time": start + dt.timedelta(minutes=lot, seconds=chip),
            "inspection_id": f"{prefix}-{lot}/I{chip}",
            "batch_id": f"{prefix}-{lot}",
            "chip_id": f"{prefix}-{lot}/C{chip}",
            "inspection_type": "optical",
            "status": "completed",
            "quality_score": 0.95,
            "defects": [
                {"defect_type": "particle", "severity": "LOW", "confidence": 0.8, "location": {"x": 0.0, "y": 0.0}}
            ]
            if chip == 0
            else [],
            "metadata": {},
        }
        for lot in range(lots)
        for chip in range(chips)
    ]


def _publish(env, events: list[dict[str, Any]]) -> None:
    with SyncInspectionEventProducer(env.kafka_config, topic=env.inspection_topic) as producer:
        producer.publish_batch(events, key_fn=lambda e: e["inspection_id"])


def _catch_up() -> None:
    catch_up(defs=build_defs(), echo=print)


def _run_checks(**overrides: dict[str, float]) -> dict[str, dg.AssetCheckEvaluation]:
    """Run the `flow_checks` job (publishes a canary, evaluates every check); results by check name."""
    config = {name: {**HEALTHY[name], **overrides.get(name, {})} for name in HEALTHY}
    run_config = {"ops": {CHECK_OPS[name]: {"config": values} for name, values in config.items()}}
    ensure_dagster_home()
    with dg.DagsterInstance.get() as instance:
        result = (
            build_defs()
            .resolve_job_def("flow_checks")
            .execute_in_process(instance=instance, run_config=run_config, raise_on_error=False)
        )
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _warehouse_sql(env, sql: str) -> None:
    conn = connect(env.warehouse)
    try:
        conn.execute(sql)
    finally:
        conn.close()


def _warehouse_rows(env, sql: str) -> list[tuple]:
    conn = connect(env.warehouse)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _failing(results: dict[str, dg.AssetCheckEvaluation]) -> set[str]:
    return {name for name, evaluation in results.items() if not evaluation.passed}


def test_canary_and_kafka_reconciliation(pipeline_env) -> None:
    _publish(pipeline_env, _events(f"CHK-{uuid.uuid4().hex[:6]}"))
    _catch_up()

    first = _run_checks()
    assert _failing(first) == set()
    assert len(first) == 7, sorted(first)
    assert "no earlier canary" in (first["canary_within_sla"].description or "")

    _catch_up()  # lands the canary (and nothing reaches a mart)
    landed = _run_checks()
    assert _failing(landed) == set()
    latency = float(landed["canary_within_sla"].metadata["latency_seconds"].value)  # type: ignore[arg-type]
    assert 0 <= latency <= 120

    # Ingest stopped: the canary of the last run never lands; nor do new inspection events.
    _publish(pipeline_env, _events(f"CHK-{uuid.uuid4().hex[:6]}", lots=1))
    time.sleep(2.5)
    stopped = _run_checks(canary_within_sla={"sla_seconds": 1.0}, kafka_offsets_reconciled={"max_stall_seconds": 1.0})
    assert _failing(stopped) == {"canary_within_sla", "kafka_offsets_reconciled"}
    offsets = stopped["kafka_offsets_reconciled"].metadata
    assert int(offsets["total_lag"].value) >= 11  # type: ignore[arg-type]
    assert "not landed" in (stopped["canary_within_sla"].description or "")

    _catch_up()
    assert _failing(_run_checks()) == set()


def _backfill_lots(first: str, last: str) -> dict[str, Any]:
    """Rewrite lots ``first``..``last`` as one backfill run (the UI's way); its blocking check's metadata."""
    ensure_dagster_home()
    with dg.DagsterInstance.get() as instance:
        result = (
            build_defs()
            .resolve_job_def("materialize_lot_quality")
            .execute_in_process(
                instance=instance,
                tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
            )
        )
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "lot_quality_data_quality"]
    return {k: v.value for k, v in evaluation.metadata.items()}


def test_data_quality_freshness_and_raw_vs_marts(pipeline_env) -> None:
    prefix = f"CHQ-{uuid.uuid4().hex[:6]}"
    _publish(pipeline_env, _events(f"{prefix}-early"))
    _catch_up()
    _publish(pipeline_env, _events(prefix))
    _catch_up()
    # The blocking check of a backfill of the 3 new lots (one range) checks those 3, not all 6.
    in_range = _backfill_lots(f"{prefix}-0", f"{prefix}-2")
    assert in_range["scope"] == f"3 lots: '{prefix}-0' … '{prefix}-2'"
    assert (in_range["mart_rows_checked"], in_range["raw_events_checked"]) == (3, 30)
    assert _failing(_run_checks()) == set()

    # A duplicate raw row: both marts' blocking data-quality checks fail.
    _warehouse_sql(
        pipeline_env,
        f"INSERT INTO raw.inspection_events SELECT * FROM raw.inspection_events WHERE batch_id = '{prefix}-0' LIMIT 1",
    )
    duplicate = _run_checks()
    assert {"lot_quality_data_quality", "defect_rates_data_quality"} <= _failing(duplicate)
    assert int(duplicate["lot_quality_data_quality"].metadata["duplicate_event_ids"].value) == 1  # type: ignore[arg-type]
    named = str(duplicate["lot_quality_data_quality"].metadata["offending_rows"].value)
    assert f"{prefix}-0" in named and "duplicate_event_ids" in named  # the check names the lot
    _warehouse_sql(
        pipeline_env,
        "CREATE OR REPLACE TABLE raw.inspection_events AS SELECT DISTINCT ON (event_id) * FROM raw.inspection_events",
    )

    # Out-of-range values in a mart and in raw.
    _warehouse_sql(pipeline_env, f"UPDATE marts.lot_quality_scores SET pass_rate = 1.5 WHERE lot_id = '{prefix}-1'")
    _warehouse_sql(
        pipeline_env,
        "UPDATE raw.defects SET confidence = 1.2 WHERE event_id IN "
        f"(SELECT event_id FROM raw.inspection_events WHERE batch_id = '{prefix}-2')",
    )
    out_of_range = _run_checks()
    assert _failing(out_of_range) == {"lot_quality_data_quality", "defect_rates_data_quality"}
    metadata = out_of_range["lot_quality_data_quality"].metadata
    assert int(metadata["pass_rates_out_of_range"].value) == 1 and int(metadata["confidences_out_of_range"].value) == 1  # type: ignore[arg-type]
    named = str(metadata["offending_rows"].value)
    assert re.search(rf"{prefix}-1 *\| pass_rates_out_of_range", named)
    assert re.search(rf"{prefix}-2 *\| confidences_out_of_range", named)
    _warehouse_sql(pipeline_env, "UPDATE marts.lot_quality_scores SET pass_rate = 1.0 WHERE pass_rate > 1")
    _warehouse_sql(pipeline_env, "UPDATE raw.defects SET confidence = 0.8 WHERE confidence > 1")
    assert _failing(_run_checks()) == set()

    # A lot's mart row lost, and a day's rows older than its raw rows: reconciliation and freshness fail.
    _warehouse_sql(pipeline_env, f"DELETE FROM marts.lot_quality_scores WHERE lot_id = '{prefix}-0'")
    _warehouse_sql(pipeline_env, "UPDATE marts.defect_rates SET updated_at = updated_at - INTERVAL 3 HOUR")
    behind = _run_checks()
    assert _failing(behind) == {"raw_marts_reconciled", "lot_quality_freshness", "defect_rates_freshness"}
    reconciled = behind["raw_marts_reconciled"].metadata
    assert int(reconciled["lots_mismatched"].value) == 1  # type: ignore[arg-type]
    assert (
        int(reconciled["raw_completed_inspections"].value) - int(reconciled["mart_inspections_completed"].value) == 10
    )  # type: ignore[arg-type]
    # Within the allowed lag the same state counts as fresh.
    relaxed = _run_checks(
        lot_quality_freshness={"max_lag_seconds": 86400}, defect_rates_freshness={"max_lag_seconds": 86400}
    )
    assert _failing(relaxed) == {"raw_marts_reconciled"}


def test_a_lot_failing_the_quality_checks_is_passed_over_by_alerts_and_stops_nothing_else(pipeline_env) -> None:
    prefix = f"GATE-{uuid.uuid4().hex[:6]}"
    good, low = _events(prefix, lots=1), [{**e, "quality_score": 0.5} for e in _events(prefix, lots=2)]
    _publish(pipeline_env, good)  # lot 0, healthy
    _catch_up()
    # A duplicated raw row of lot 0; then lot 0's inspections complete again with bad scores, and lot 1
    # arrives with bad scores: both lots break lot_mean_score now, and the next cycle judges both.
    _warehouse_sql(
        pipeline_env,
        f"INSERT INTO raw.inspection_events SELECT * FROM raw.inspection_events WHERE batch_id = '{prefix}-0' LIMIT 1",
    )
    (duplicated,) = _warehouse_rows(
        pipeline_env,
        f"SELECT event_id FROM raw.inspection_events WHERE batch_id = '{prefix}-0' GROUP BY 1 HAVING count(*) > 1",
    )
    rework = [
        {**event, "event_id": str(uuid.uuid4()), "event_time": event["event_time"] + dt.timedelta(minutes=30)}
        for event in low[:10]
    ]
    _publish(pipeline_env, rework + low[10:])
    catch_up(defs=build_defs(), echo=print, max_rounds=1)  # no error: the bad lot stops nothing
    ensure_dagster_home()
    with dg.DagsterInstance.get() as instance:
        [run] = instance.get_runs(dg.RunsFilter(job_name="pipeline_cycle"), limit=1)
        steps = {
            entry.dagster_event.step_key: entry.dagster_event.event_type_value
            for entry in instance.all_logs(run.run_id)
            if entry.dagster_event is not None
            and entry.dagster_event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE")
        }
        outbox = instance.get_latest_materialization_event(dg.AssetKey(["ops", "alert_outbox"]))
    assert run.status == dg.DagsterRunStatus.SUCCESS, steps
    assert set(steps.values()) == {"STEP_SUCCESS"}
    metadata = outbox.asset_materialization.metadata  # type: ignore[union-attr]
    assert metadata["quarantined_lots"].value == 1
    named = str(metadata["offending_rows"].value)
    assert f"{prefix}-0" in named and "duplicate_event_ids" in named and duplicated[0] in named
    alerted = {lot for (lot,) in _warehouse_rows(pipeline_env, "SELECT DISTINCT lot_id FROM ops.alert_outbox")}
    assert f"{prefix}-1" in alerted  # the clean lot is judged and alerted on
    assert f"{prefix}-0" not in alerted  # nothing published from the failing lot's data
