"""Fault: the Dagster daemon restarted (hard and graceful) while its sensors ingest a stream."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chipq_pipelines.events.producers import SyncInspectionEventProducer
from chipq_pipelines.paths import REPO_ROOT
from chipq_pipelines.runner import ensure_dagster_home
from chipq_pipelines.warehouse.snapshot import query_snapshot

pytestmark = pytest.mark.reliability

RESTARTS = ("SIGKILL", "SIGINT", "SIGKILL")
DEADLINE_S = 240


def _start(env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(REPO_ROOT / "workspace.yaml")],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen, how: str) -> None:
    if process.poll() is not None:
        return
    if how == "SIGKILL":  # the daemon process alone dies hard; runs it launched keep going
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        return
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _landed(snapshot: Path) -> int:
    if not snapshot.exists():
        return 0
    return int(query_snapshot(snapshot, "SELECT count(DISTINCT event_id) AS n FROM raw.inspection_events")["n"][0])


@pytest.mark.timeout(600)
@pytest.mark.case("fault", "Dagster daemon restarted (SIGKILL, SIGINT, SIGKILL) while sensors ingest a stream")
def test_daemon_restarted_while_sensors_run(kafka_bootstrap, make_env, rel, row, tmp_path) -> None:
    env = make_env(kafka_bootstrap)
    ensure_dagster_home()
    process_env = {**os.environ, **env.env}
    log = tmp_path / "daemon.log"
    acked: set[str] = set()
    stop = threading.Event()

    def publisher() -> None:
        batch = 0
        with SyncInspectionEventProducer(env.kafka_config, topic=env.inspection_topic) as producer:
            while not stop.is_set():
                ok, failed = rel.publish_acked(producer, rel.make_events(100, f"DAEMON{batch}"))
                assert not failed
                acked.update(ok)
                batch += 1
                stop.wait(1.0)

    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    daemon = _start(process_env, log)
    restarts = []
    try:
        for how in RESTARTS:
            # Let the sensors land something first, then restart in the middle of the stream.
            target = _landed(env.snapshot) + 1
            deadline = time.monotonic() + 90
            while _landed(env.snapshot) < target and time.monotonic() < deadline:
                assert daemon.poll() is None, log.read_text()[-3000:]
                time.sleep(1)
            _stop(daemon, how)
            restarts.append(how)
            daemon = _start(process_env, log)
        time.sleep(5)
        stop.set()
        thread.join(timeout=60)
        deadline = time.monotonic() + DEADLINE_S
        while _landed(env.snapshot) < len(acked) and time.monotonic() < deadline:
            assert daemon.poll() is None, log.read_text()[-3000:]
            time.sleep(2)
        caught_up_s = DEADLINE_S - (deadline - time.monotonic())
    finally:
        stop.set()
        _stop(daemon, "SIGINT")
    # Any run the killed daemons left unfinished must not hold the writer: let catch-up finish the job.
    counts = rel.tally(env, acked)
    row.repetitions = len(restarts)
    row.sent = len(acked)
    row.landed = counts.landed_ids
    row.rejected = counts.rejected
    row.lost = counts.lost
    row.duplicated = counts.duplicated
    row.note(
        f"restarts: {', '.join(restarts)} (SIGKILL hits the daemon process only); the restarted daemon's sensors "
        f"brought the snapshot to every acknowledged event {caught_up_s:.0f} s after the stream stopped, "
        "without `chipq catch-up`"
    )
    assert counts.lost == 0 and counts.duplicated == 0
