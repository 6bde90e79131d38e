"""The real Dagster daemon: sensors ingest and materialize by themselves.

New events reach the marts and the analyst snapshot without `chipq catch-up`;
while the daemon works, `chipq catch-up` and analysts' queries run alongside
with zero DuckDB lock errors (one writer slot, analysts on the snapshot).
The first test runs twice: on Dagster's default SQLite storage and on a real
PostgreSQL, where the runs, their events, the sensor's ticks and the writer
pool are then read back from PostgreSQL's own tables.
"""

from __future__ import annotations

import datetime as dt
import itertools
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

from chipq_pipelines.dagster_storage import write_instance
from chipq_pipelines.defs.shared import WRITER_POOL
from chipq_pipelines.events.producers import SyncInspectionEventProducer
from chipq_pipelines.local_postgres import LocalPostgres
from chipq_pipelines.paths import REPO_ROOT
from chipq_pipelines.runner import PID_TAG, ensure_dagster_home
from chipq_pipelines.warehouse.snapshot import query_snapshot

pytestmark = pytest.mark.e2e

DEADLINE_S = 300
UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


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


def _unfinished_runs(dagster_home: Path) -> int:
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        return len(instance.get_runs(dg.RunsFilter(statuses=UNFINISHED)))


def _a_run_waits_while_the_pool_is_held(server: LocalPostgres, database: str, pipeline_env) -> None:
    """With the one writer slot taken in PostgreSQL, the daemon's next run waits there; freed, it proceeds.

    The slot is claimed through Dagster's own storage, as a step of another process would (waiting
    its turn like one), under a run id no run has (the daemon frees slots of finished runs only).
    """
    holder = ("chipq-test-holds-the-writer-pool", "held")

    def rows(sql: str, *params: object) -> list[tuple]:
        return server.query(database, sql, params)

    deadline = time.monotonic() + DEADLINE_S
    with dg.DagsterInstance.from_config(str(pipeline_env.home / "dagster")) as instance:
        storage = instance.event_log_storage
        try:
            while not storage.claim_concurrency_slot(WRITER_POOL, *holder).is_claimed:
                assert time.monotonic() < deadline, "the writer slot never came free"
                time.sleep(1)
            with SyncInspectionEventProducer(pipeline_env.kafka_config, topic=pipeline_env.inspection_topic) as p:
                p.publish_batch(
                    _events("DAEMON-LOT-4", 20, dt.datetime.now(dt.UTC)), key_fn=lambda e: e["inspection_id"]
                )
            pending = "SELECT DISTINCT run_id FROM pending_steps WHERE concurrency_key = %s AND run_id <> %s"
            while not rows(pending, WRITER_POOL, holder[0]):
                assert time.monotonic() < deadline, "no run of the daemon came to wait for the writer pool"
                time.sleep(1)
            time.sleep(5)  # it keeps waiting: nothing of it starts while the slot is taken
            waiting_runs = [run_id for (run_id,) in rows(pending, WRITER_POOL, holder[0])]
            step_starts = (
                "SELECT count(*), min(timestamp) FROM event_logs "
                "WHERE run_id = ANY(%s) AND dagster_event_type = 'STEP_START'"
            )
            assert rows(step_starts, waiting_runs)[0][0] == 0, waiting_runs
            holders = "SELECT run_id FROM concurrency_slots WHERE concurrency_key = %s AND NOT deleted"
            assert rows(holders, WRITER_POOL) == [(holder[0],)]
            assert "DAEMON-LOT-4" not in _lot_counts(pipeline_env.snapshot)
            freed_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)  # event_logs keeps naive UTC
        finally:
            storage.free_concurrency_slot_for_step(*holder)
    while _lot_counts(pipeline_env.snapshot).get("DAEMON-LOT-4") != 20:
        assert time.monotonic() < deadline, "the waiting run did not land its events once the slot was free"
        time.sleep(1)
    [(started, first_start)] = rows(step_starts, waiting_runs)
    assert started > 0 and first_start >= freed_at


def _pooled_steps() -> set[str]:
    """The step keys (top-level op names) of every job whose op runs in the writer pool."""
    from chipq_pipelines.definitions import build_defs

    repository = build_defs().get_repository_def()
    return {
        node.name
        for job in repository.get_all_jobs()
        for node in job.graph.nodes
        if node.definition.pool == WRITER_POOL
    }


def _assert_dagster_state_in_postgres(server: LocalPostgres, database: str, dagster_home: Path) -> None:
    """Runs, events, sensor ticks and the writer pool are rows of PostgreSQL; two runs never held the pool at once."""

    def rows(sql: str, *params: object) -> list[tuple]:
        return server.query(database, sql, params)

    runs = rows(
        "SELECT r.run_id, r.status, EXISTS (SELECT 1 FROM run_tags t WHERE t.run_id = r.run_id AND t.key = %s) "
        "FROM runs r WHERE r.pipeline_name = 'pipeline_cycle'",
        PID_TAG,
    )
    daemon_runs = {run_id for run_id, _, by_catch_up in runs if not by_catch_up}
    assert any(status == "SUCCESS" for run_id, status, _ in runs if run_id in daemon_runs), runs
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:  # Dagster's view is these rows
        assert {run.run_id for run in instance.get_runs(dg.RunsFilter(job_name="pipeline_cycle"))} == {
            run_id for run_id, _, _ in runs
        }
    # The queued run coordinator ran there: each daemon run was enqueued, and its heartbeat is a row too.
    enqueued = {
        run_id for (run_id,) in rows("SELECT run_id FROM event_logs WHERE dagster_event_type = 'PIPELINE_ENQUEUED'")
    }
    assert daemon_runs <= enqueued
    daemons = {daemon for (daemon,) in rows("SELECT daemon_type FROM daemon_heartbeats")}
    assert {"SENSOR", "QUEUED_RUN_COORDINATOR"} <= daemons
    landed = rows(
        "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' AND asset_key LIKE %s",
        '%"raw", "inspection_events"%',
    )
    assert landed[0][0] >= len(daemon_runs)
    ticks = rows(
        "SELECT count(*) FROM job_ticks t JOIN jobs j ON j.job_origin_id = t.job_origin_id "
        "WHERE t.type = 'SENSOR' AND j.job_body LIKE '%kafka_offsets_sensor%'"
    )
    assert ticks[0][0] > 0, "the offsets sensor's ticks are not in PostgreSQL"
    # Nothing went to SQLite files under DAGSTER_HOME.
    assert sorted(dagster_home.rglob("*.db")) == []

    # The pool: one slot, kept in PostgreSQL, and no two steps of the pool ever ran at the same time.
    assert rows('SELECT concurrency_key, "limit" FROM concurrency_limits') == [(WRITER_POOL, 1)]
    assert rows("SELECT count(*) FROM concurrency_slots WHERE concurrency_key = %s AND NOT deleted", WRITER_POOL) == [
        (1,)
    ]
    pooled = _pooled_steps()
    spans: dict[tuple[str, str], list] = {}
    for run_id, step_key, event_type, when in rows(
        "SELECT run_id, step_key, dagster_event_type, timestamp FROM event_logs "
        "WHERE dagster_event_type IN ('STEP_START', 'STEP_SUCCESS', 'STEP_FAILURE') ORDER BY id"
    ):
        span = spans.setdefault((run_id, step_key), [None, None])
        span[0 if event_type == "STEP_START" else 1] = when
    held = sorted((start, end, run_id, step) for (run_id, step), (start, end) in spans.items() if step in pooled)
    assert len({run_id for _, _, run_id, _ in held}) >= 2, held
    for (_, end, run_id, step), (start, _, next_run, next_step) in itertools.pairwise(held):
        assert end is not None and end <= start, (
            f"{run_id}/{step} still held {WRITER_POOL} when {next_run}/{next_step} began"
        )


@pytest.mark.parametrize("storage", ["sqlite", "postgres"])
def test_daemon_sensors_carry_new_events_to_the_marts_alongside_catch_up_and_analysts(
    storage, pipeline_env, tmp_path, request, monkeypatch
) -> None:
    dagster_home = pipeline_env.home / "dagster"
    if storage == "postgres":
        server: LocalPostgres = request.getfixturevalue("postgres_server")
        database: str = request.getfixturevalue("postgres_database")
        for name, value in server.env(database).items():
            monkeypatch.setenv(name, value)
        write_instance(dagster_home, "postgres")
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
        # The run that published the view ends a moment later: let it, so the daemon stops idle.
        while time.monotonic() < deadline and _unfinished_runs(dagster_home):
            time.sleep(1)
        if storage == "postgres":
            _a_run_waits_while_the_pool_is_held(server, database, pipeline_env)
            while time.monotonic() < deadline and _unfinished_runs(dagster_home):
                time.sleep(1)
    finally:
        stop_queries.set()
        reader.join(timeout=10)
        _stop(daemon)
    assert query_errors == []
    assert queries > 0
    log_text = daemon_log.read_text()
    assert "Could not set lock" not in log_text and "Conflicting lock" not in log_text
    assert "lock" not in catch_up.stderr.lower()
    if storage == "postgres":
        _assert_dagster_state_in_postgres(server, database, dagster_home)
    else:  # the check above can tell: SQLite storage is files under DAGSTER_HOME
        assert sorted(dagster_home.rglob("*.db"))


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
