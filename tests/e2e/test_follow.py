"""`chipq catch-up --follow`: the pipeline keeps up with a stream without the daemon.

Events published while the follower runs reach the analyst snapshot by
themselves; SIGTERM lets the current run finish and exits 0 with a summary.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chipq_pipelines.events.producers import SyncInspectionEventProducer
from chipq_pipelines.paths import REPO_ROOT
from chipq_pipelines.warehouse.samples import inspection_event
from chipq_pipelines.warehouse.snapshot import query_snapshot

pytestmark = pytest.mark.e2e

DEADLINE_S = 120


def _publish(env, lot: str, count: int) -> None:
    when = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=30)
    events = [inspection_event(batch_id=lot, event_time=when) for _ in range(count)]
    with SyncInspectionEventProducer(env.kafka_config, topic=env.inspection_topic) as producer:
        producer.publish_batch(events, key_fn=lambda e: e["inspection_id"])


def _landed(snapshot: Path, lot: str) -> int:
    if not snapshot.exists():
        return 0
    frame = query_snapshot(snapshot, f"SELECT count(*) AS n FROM raw.inspection_events WHERE batch_id = '{lot}'")
    return int(frame["n"][0])


def _wait_for(snapshot: Path, lot: str, count: int, follower: subprocess.Popen) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while _landed(snapshot, lot) < count:
        assert follower.poll() is None, f"the follower exited early with {follower.returncode}"
        assert time.monotonic() < deadline, f"{lot}: {_landed(snapshot, lot)} of {count} in the snapshot"
        time.sleep(0.5)


def test_follow_keeps_up_with_new_events_and_stops_cleanly_on_sigterm(pipeline_env) -> None:
    follower = subprocess.Popen(
        [sys.executable, "-m", "chipq_pipelines.cli", "catch-up", "--follow", "--interval", "1"],
        env={**os.environ, **pipeline_env.env},
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _publish(pipeline_env, "FOLLOW-A", 300)
        _wait_for(pipeline_env.snapshot, "FOLLOW-A", 300, follower)
        _publish(pipeline_env, "FOLLOW-B", 200)  # a second batch, picked up by a later pass
        _wait_for(pipeline_env.snapshot, "FOLLOW-B", 200, follower)
        follower.send_signal(signal.SIGTERM)
        output, _ = follower.communicate(timeout=120)
    except BaseException:
        follower.kill()
        print(follower.communicate()[0])  # shown by pytest with the failure
        raise
    assert follower.returncode == 0, output
    assert "SIGTERM: finishing the current run" in output, output
    summary = [line for line in output.splitlines() if line.startswith("stopped after")]
    # 500 inspection events, plus the threshold-violation events the pipeline published and landed itself
    assert summary and "(0 failed)" in summary[0], output
    assert int(summary[0].split(": ")[1].split(" events landed")[0]) >= 500, output
    assert (_landed(pipeline_env.snapshot, "FOLLOW-A"), _landed(pipeline_env.snapshot, "FOLLOW-B")) == (300, 200)
    # Each pass that landed events says so, with a time stamp.
    assert any(" events landed, " in line and line[:2].isdigit() for line in output.splitlines()), output
