"""The real Dagster daemon: sensors ingest and materialize by themselves.

New events reach the marts and the analyst snapshot without `chipq catch-up`;
while the daemon works, `chipq catch-up` and analysts' queries run alongside
with zero DuckDB lock errors (one writer slot, analysts on the snapshot).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

from chipq_pipelines.events.producers import SyncInspectionEventProducer
from chipq_pipelines.paths import REPO_ROOT
from chipq_pipelines.runner import PID_TAG, ensure_dagster_home
from chipq_pipelines.warehouse.snapshot import query_snapshot

pytestmark = pytest.mark.e2e

DEADLINE_S = 300


def _events(lot: str, count: int, when: dt.datetime) -> list[dict]:
    return [
        {
            "event_type": "INSPECTION_COMPLETED",
            "inspection_id": f"{lot}-INS-{i}",
            "batch_id": lot,
            "chip_id": f"{lot}-C{i}",
            "inspection_type": "optical",
            "status": "completed",
            "quality_score": 0.9 + (i % 10) / 100,
            "defects": [],
            "metadata": {},
            "event_time": when,
        }
        for i in range(count)
    ]


def _lot_counts(snapshot: Path) -> dict[str, int]:
    if not snapshot.exists():
        return {}
    frame = query_snapshot(snapshot, "SELECT lot_id, inspections_completed FROM marts.lot_quality_scores")
    return dict(zip(frame["lot_id"], frame["inspections_completed"].astype(int), strict=True))


def _start_daemon(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """``dagster-daemon run`` on the workspace, in a session of its own (``_stop`` signals the group)."""
    dagster_daemon = Path(sys.executable).with_name("dagster-daemon")
    with open(log_path, "wb") as log:  # the child keeps its own handle
        return subprocess.Popen(
            [str(dagster_daemon), "run", "-w", str(REPO_ROOT / "workspace.yaml")],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def test_daemon_sensors_carry_new_events_to_the_marts_alongside_catch_up_and_analysts(pipeline_env, tmp_path) -> None:
    ensure_dagster_home()
    env = {**os.environ, **pipeline_env.env}
    daemon_log = tmp_path / "daemon.log"
    daemon = _start_daemon(env, daemon_log)
    query_errors: list[str] = []
    queries = 0
    stop_queries = threading.Event()

    def analyst() -> None:
        nonlocal queries
        while not stop_queries.is_set():
            try:
                if pipeline_env.snapshot.exists():
                    query_snapshot(pipeline_env.snapshot, "SELECT count(*) FROM marts.lot_quality_scores")
                    queries += 1
            except duckdb.Error as exc:
                query_errors.append(repr(exc))
            time.sleep(0.2)

    reader = threading.Thread(target=analyst, daemon=True)
    reader.start()
    try:
        now = dt.datetime.now(dt.UTC)
        with SyncInspectionEventProducer(pipeline_env.kafka_config, topic=pipeline_env.inspection_topic) as producer:
            producer.publish_batch(_events("DAEMON-LOT-1", 40, now), key_fn=lambda e: e["inspection_id"])
            producer.publish_batch(_events("DAEMON-LOT-2", 25, now), key_fn=lambda e: e["inspection_id"])

        # catch-up in another process at the same time as the daemon's runs
        catch_up = subprocess.run(
            [sys.executable, "-m", "chipq_pipelines.cli", "catch-up"],
            env=env,
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
        )
        assert catch_up.returncode == 0, catch_up.stderr[-3000:]

        # More events with the daemon alone: they must arrive without catch-up.
        with SyncInspectionEventProducer(pipeline_env.kafka_config, topic=pipeline_env.inspection_topic) as producer:
            producer.publish_batch(_events("DAEMON-LOT-3", 30, now), key_fn=lambda e: e["inspection_id"])
        expected = {"DAEMON-LOT-1": 40, "DAEMON-LOT-2": 25, "DAEMON-LOT-3": 30}
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline and _lot_counts(pipeline_env.snapshot) != expected:
            assert daemon.poll() is None, daemon_log.read_text()[-3000:]
            time.sleep(2)
        assert _lot_counts(pipeline_env.snapshot) == expected, daemon_log.read_text()[-3000:]
    finally:
        stop_queries.set()
        reader.join(timeout=10)
        _stop(daemon)
    assert query_errors == []
    assert queries > 0
    log_text = daemon_log.read_text()
    assert "Could not set lock" not in log_text and "Conflicting lock" not in log_text
    assert "lock" not in catch_up.stderr.lower()


def _stream_event(index: int, when: dt.datetime) -> dict:
    lot = f"TURN-LOT-{index // 50}"
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": "INSPECTION_COMPLETED",
        "inspection_id": f"{lot}-INS-{index}",
        "batch_id": lot,
        "chip_id": f"{lot}-C{index}",
        "inspection_type": "optical",
        "status": "completed",
        "quality_score": 0.5 + (index % 50) / 100,
        "defects": [{"defect_type": "scratch", "severity": "LOW", "confidence": 0.9, "location": {"x": 1.0, "y": 2.0}}]
        if index % 3 == 0
        else [],
        "metadata": {},
        "event_time": when,
    }


def _run_counts(pipeline_env) -> tuple[int, int]:
    """pipeline_cycle runs that succeeded: (launched by the daemon, executed by chipq catch-up)."""
    with dg.DagsterInstance.from_config(str(pipeline_env.home / "dagster")) as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name="pipeline_cycle", statuses=[dg.DagsterRunStatus.SUCCESS]))
    by_catch_up = sum(1 for run in runs if PID_TAG in run.tags)
    return len(runs) - by_catch_up, by_catch_up


@pytest.mark.timeout(900)
def test_daemon_and_catch_up_take_turns_on_one_stream(pipeline_env, tmp_path) -> None:
    """Daemon, catch-up, daemon, catch-up, daemon, catch-up while events keep coming: nothing lost or doubled."""
    ensure_dagster_home()
    env = {**os.environ, **pipeline_env.env}
    acked: list[dict] = []
    stop_stream = threading.Event()
    stream_errors: list[str] = []

    def stream() -> None:  # about 100 events/s, in lots of 50, acknowledged before they count
        index = 0
        try:
            with SyncInspectionEventProducer(pipeline_env.kafka_config, topic=pipeline_env.inspection_topic) as p:
                while not stop_stream.is_set():
                    batch = [_stream_event(i, dt.datetime.now(dt.UTC)) for i in range(index, index + 20)]
                    p.publish_batch(batch, key_fn=lambda e: e["inspection_id"])
                    acked.extend(batch)
                    index += len(batch)
                    time.sleep(0.2)
        except Exception as exc:  # the assertion below reports it
            stream_errors.append(repr(exc))

    producer = threading.Thread(target=stream, daemon=True)
    producer.start()
    turns: list[tuple[int, int]] = []
    try:
        for turn in range(3):
            daemon_runs_before = _run_counts(pipeline_env)[0]
            daemon = _start_daemon(env, tmp_path / f"daemon-{turn}.log")
            try:  # the daemon's turn: until it has run two cycles of its own, mid-stream
                deadline = time.monotonic() + DEADLINE_S
                while _run_counts(pipeline_env)[0] < daemon_runs_before + 2:
                    assert not stream_errors, stream_errors
                    assert daemon.poll() is None and time.monotonic() < deadline, tmp_path / f"daemon-{turn}.log"
                    time.sleep(1)
            finally:
                _stop(daemon)  # SIGINT: a run in flight is interrupted and fails; the next planner re-plans it
            catch_up = subprocess.run(  # catch-up's turn, while the stream goes on (which never runs dry)
                [sys.executable, "-m", "chipq_pipelines.cli", "catch-up", "--max-rounds", "3"],
                env=env,
                capture_output=True,
                text=True,
                timeout=DEADLINE_S,
            )
            assert catch_up.returncode == 0, catch_up.stderr[-3000:]
            turns.append(_run_counts(pipeline_env))
            print(f"turn {turn}: {len(acked)} events acknowledged, runs (daemon, catch-up) {turns[-1]}", flush=True)
    finally:
        stop_stream.set()
        producer.join(timeout=30)
    assert stream_errors == []
    final = subprocess.run(
        [sys.executable, "-m", "chipq_pipelines.cli", "catch-up"], env=env, capture_output=True, text=True, timeout=300
    )
    assert final.returncode == 0, final.stderr[-3000:]

    # Both took turns: every daemon turn and every catch-up turn ran cycles of its own.
    daemon_runs = [d for d, _ in turns]
    catch_up_runs = [c for _, c in turns]
    assert daemon_runs[0] >= 2 and daemon_runs[1] >= daemon_runs[0] + 2 and daemon_runs[2] >= daemon_runs[1] + 2
    assert catch_up_runs[0] >= 1 and catch_up_runs[1] > catch_up_runs[0] and catch_up_runs[2] > catch_up_runs[1]

    # Exactly the acknowledged events, each once, and marts equal to a recount of them.
    ids = query_snapshot(pipeline_env.snapshot, "SELECT event_id, count(*) AS n FROM raw.inspection_events GROUP BY 1")
    assert len(ids) == len(acked) and set(ids["event_id"]) == {e["event_id"] for e in acked}
    assert int(ids["n"].max()) == 1, "an event id landed twice"
    lots = query_snapshot(
        pipeline_env.snapshot,
        "SELECT lot_id, inspections_completed AS n, mean_quality_score AS mean FROM marts.lot_quality_scores",
    )
    expected_lots: dict[str, list[float]] = {}
    for event in acked:
        expected_lots.setdefault(event["batch_id"], []).append(event["quality_score"])
    counts = dict(zip(lots["lot_id"], lots["n"].astype(int), strict=True))
    assert counts == {lot: len(scores) for lot, scores in expected_lots.items()}
    for lot, mean in zip(lots["lot_id"], lots["mean"], strict=True):
        assert mean == pytest.approx(sum(expected_lots[lot]) / len(expected_lots[lot]), abs=1e-9)
    rates = query_snapshot(
        pipeline_env.snapshot, "SELECT event_date, chips_inspected, chips_with_defect FROM marts.defect_rates"
    )
    expected_days: dict[dt.date, list[int]] = {}
    for event in acked:
        day = expected_days.setdefault(event["event_time"].date(), [0, 0])
        day[0] += 1
        day[1] += bool(event["defects"])
    actual_days = {
        pd.Timestamp(d).date(): [int(i), int(w)]
        for d, i, w in zip(rates["event_date"], rates["chips_inspected"], rates["chips_with_defect"], strict=True)
    }
    assert actual_days == expected_days
