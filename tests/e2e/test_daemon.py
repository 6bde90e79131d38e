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
from pathlib import Path

import duckdb
import pytest

from chipq_pipelines.events.producers import SyncInspectionEventProducer
from chipq_pipelines.paths import REPO_ROOT
from chipq_pipelines.runner import ensure_dagster_home
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
    dagster_daemon = Path(sys.executable).with_name("dagster-daemon")
    with open(daemon_log, "wb") as log:
        daemon = subprocess.Popen(
            [str(dagster_daemon), "run", "-w", str(REPO_ROOT / "workspace.yaml")],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
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
