"""Reliability suite: faults, bad input, load and security against real brokers.

Every test records one row (case, repetitions, seconds, events sent, landed,
rejected, lost, duplicated, result, notes) through the ``row`` fixture; at the
end of the session the rows are written to ``docs/reliability.md`` with the
command, the date and short method notes. Lost and duplicated events are
counted from the pipeline's DuckDB warehouse against the set of event ids the
test published (and Kafka acknowledged).

Helpers shared by the test modules are exposed through the ``rel`` fixture
(the suite runs with ``--import-mode=importlib``, so test modules cannot import
each other).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import pytest

from chipq_pipelines.environment import PipelineEnv
from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.errors import PublishError
from chipq_pipelines.events.producers import SyncInspectionEventProducer
from chipq_pipelines.local_cluster import LocalKafkaCluster, free_consecutive_ports
from chipq_pipelines.local_kafka import LocalKafka, free_port, kafka_version
from chipq_pipelines.paths import REPO_ROOT, ChipqHome

#: The jar cache of the session's CHIPQ_HOME, captured before tests repoint CHIPQ_HOME.
KAFKA_LIB = ChipqHome.from_env().kafka_lib
if not any(KAFKA_LIB.glob("kafka_2.13-*.jar")):
    KAFKA_LIB = REPO_ROOT / ".chipq" / "kafka" / "lib"
SOAK_SECONDS = float(os.environ.get("CHIPQ_SOAK_SECONDS", "20"))
SOAK_RATE = 200  # events per second
SOAK_INTERVAL_S = 10  # seconds between the follower's passes
SOAK_TEST = "test_soak_with_rss_sampled"
SUITE_BOUND_S = 15 * 60  # the whole suite, soak included (issue 7)
#: Where the table goes: docs/reliability.md from `make reliability`, test-output/ otherwise.
REPORT_PATH = Path(os.environ.get("CHIPQ_RELIABILITY_REPORT") or REPO_ROOT / "test-output" / "reliability.md")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability: faults, bad input, load and security (docs/reliability.md)")
    config.addinivalue_line("markers", "case(category, name): the row of docs/reliability.md a test records")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The soak runs in the background from the first reliability test on (see
    # ``soak``); the test that collects its result goes last.
    soaks = [item for item in items if item.name == SOAK_TEST]
    for item in soaks:
        items.remove(item)
        items.append(item)


# ------------------------------------------------------------------ the collector


@dataclass
class Row:
    category: str
    case: str
    repetitions: int = 1
    seconds: float = 0.0
    sent: int | None = None
    landed: int | None = None
    rejected: int | None = None
    lost: int | None = None
    duplicated: int | None = None
    result: str = "not run"
    notes: list[str] = field(default_factory=list)
    order: int = 0

    def note(self, text: str) -> None:
        self.notes.append(text)


ROWS: list[Row] = []
_SESSION_STARTED = time.monotonic()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" or (report.when == "setup" and report.failed):
        item.stash[_OUTCOME] = report


_OUTCOME = pytest.StashKey[pytest.TestReport]()


def _finish(entry: Row, request: pytest.FixtureRequest, started: float) -> None:
    entry.seconds = entry.seconds or (time.monotonic() - started)
    if entry.result != "not run":  # the test judged this row itself
        ROWS.append(entry)
        return
    report = request.node.stash.get(_OUTCOME, None)
    if report is None:
        entry.result = "error"
    elif report.passed:
        entry.result = "pass"
    else:
        crash = getattr(report.longrepr, "reprcrash", None)
        message = str(getattr(crash, "message", "") or "")
        first = message.strip().splitlines()[0] if message.strip() else "see the test log"
        entry.result = "**FAIL**"
        entry.note(f"failure: {first[:300]}")
    ROWS.append(entry)


@pytest.fixture
def row(request: pytest.FixtureRequest) -> Iterator[Row]:
    """The table row of this test; recorded (with the test's outcome) when the test ends."""
    marker = request.node.get_closest_marker("case")
    category, case = marker.args if marker else ("other", request.node.name)
    entry = Row(category=category, case=case, order=len(ROWS))
    started = time.monotonic()
    yield entry
    _finish(entry, request, started)


@pytest.fixture
def sub_rows(request: pytest.FixtureRequest) -> Iterator[Callable[[str, str], Row]]:
    """Factory of further rows of one test (set ``result`` to judge a row on its own)."""
    made: list[Row] = []
    started = time.monotonic()

    def make(category: str, case: str) -> Row:
        entry = Row(category=category, case=case, order=len(ROWS) + len(made) + 1)
        made.append(entry)
        return entry

    yield make
    for entry in made:
        _finish(entry, request, started)


#: Kept in the generated file: cases measured by tests/e2e/test_alerts.py and test_events_processor.py.
ALERT_SECTION = Path(__file__).with_name("alert_cases.md").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="session", autouse=True)
def _write_report() -> Iterator[None]:
    yield
    if ROWS:
        write_report(ROWS, time.monotonic() - _SESSION_STARTED)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_report(rows: list[Row], total_s: float) -> Path:
    order = {"fault": 0, "bad input": 1, "load": 2, "security": 3}
    rows = sorted(rows, key=lambda r: (order.get(r.category, 9), r.order))
    try:
        version = kafka_version(KAFKA_LIB)
    except Exception:
        version = "?"
    command = " ".join(["pytest", *sys.argv[1:]]) if sys.argv else "pytest"
    lines = [
        "# Reliability: faults, bad input, load and attack",
        "",
        "Generated by the reliability suite (`tests/reliability/`) at the end of its run; do not edit by hand.",
        "",
        f"- command: `CHIPQ_SOAK_SECONDS={SOAK_SECONDS:g} {command}` (run from the repository root)",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; suite wall time {total_s:,.0f} s "
        f"({'within' if total_s <= SUITE_BOUND_S else '**over**'} the {SUITE_BOUND_S / 60:.0f}-minute bound)",
        f"- machine: {os.cpu_count()} CPU(s), Python {platform.python_version()}, Apache Kafka {version} (KRaft, "
        "started by the tests), DuckDB warehouse",
        "",
        "| category | case | times | seconds | sent | landed | rejected | lost | duplicated | result | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        cells = [
            r.category,
            r.case,
            r.repetitions,
            r.seconds,
            r.sent,
            r.landed,
            r.rejected,
            r.lost,
            r.duplicated,
            r.result,
            "; ".join(r.notes),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", *ALERT_SECTION, ""]
    lines += [
        "## Method",
        "",
        "- **Sent** is what Kafka acknowledged to the test's producer (valid events plus any raw bad records); "
        "**landed** is the distinct event ids of those in `raw.inspection_events`; **rejected** is the rows of "
        "`ops.rejected_events`. **Lost** = acknowledged event ids missing from the warehouse; **duplicated** = "
        "rows beyond the first per event id (plus rows of ids the test never published). Both are read from the "
        "pipeline's DuckDB warehouse after the last catch-up, never from the pipeline's own counters.",
        "- Each case has its own topics, consumer group, CHIPQ_HOME and DAGSTER_HOME. The broker faults, the "
        "producer fault and SASL use brokers of their own (LocalKafka on a free port, temp instance dir, the "
        "cached jars); the 3-broker case a cluster of its own (`LocalKafkaCluster`, as `chipq kafka up --brokers 3` "
        "starts it: replication 3, min.insync.replicas 2, 384 MB heap a node); the session broker is never killed.",
        "- Ingest crashes use `CHIPQ_FAULT_INJECT=after_landing`: the run exits hard (`os._exit(137)`) after the "
        "DuckDB transaction that lands rows + offsets and before offsets are committed to the Kafka group.",
        "- Broker faults are SIGKILL (no clean shutdown) followed by a restart on the same port and data dir, while "
        "a producer thread keeps publishing and the pipeline keeps catching up. On the 3-broker cluster the node "
        "leading the most partitions is killed once while the library's producer publishes (acks=all, idempotent) "
        "and once while `chipq catch-up` lands the backlog in small runs; any producer error reaching the caller "
        "fails the case.",
        "- Throughput under analyst load = events landed per second of `catch_up` wall time, same event volume, "
        "without and with eight analyst processes querying the snapshot in a loop (2 cores shared).",
        f"- Soak: {SOAK_RATE} events/s for `CHIPQ_SOAK_SECONDS` (this run: {SOAK_SECONDS:g} s) into a pipeline "
        f"kept up by `chipq catch-up --follow --interval {SOAK_INTERVAL_S}` (a subprocess), whose RSS is sampled "
        "every 5 s after start-up. It runs in the background from the first test on, alongside the other "
        "cases (which is why their seconds include its load); the follower is stopped with SIGTERM at the end "
        "and one `chipq catch-up` lands the tail.",
        "- Re-run: `make reliability` (the suite with a 600 s soak; writes this file), or "
        "`CHIPQ_SOAK_SECONDS=600 CHIPQ_RELIABILITY_REPORT=docs/reliability.md .venv/bin/pytest -m reliability "
        "tests/reliability`. Without `CHIPQ_RELIABILITY_REPORT` the table goes to `test-output/reliability.md`.",
        "",
    ]
    REPORT_PATH.parent.mkdir(parents=True, exist_ok=True)
    REPORT_PATH.write_text("\n".join(lines))
    return REPORT_PATH


# ------------------------------------------------------------------ environments


@pytest.fixture
def make_env(make_pipeline_env: Callable[..., PipelineEnv]) -> Callable[..., PipelineEnv]:
    """Factory of isolated pipelines (``make_pipeline_env`` of ``tests/conftest.py``)."""
    return make_pipeline_env


@pytest.fixture
def own_broker() -> Iterator[LocalKafka]:
    """A broker of this test alone (free port, temp dir, cached jars): safe to SIGKILL."""
    instance_dir = Path(tempfile.mkdtemp(prefix="chipq-rel-kafka-"))
    broker = LocalKafka(port=free_port(), instance_dir=instance_dir, lib_dir=KAFKA_LIB, heap="512m")
    broker.start(quiet=True)
    try:
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(instance_dir, ignore_errors=True)


@pytest.fixture
def own_cluster() -> Iterator[LocalKafkaCluster]:
    """A 3-node KRaft cluster of this test alone (consecutive free ports, temp CHIPQ_HOME, cached jars)."""
    root = Path(tempfile.mkdtemp(prefix="chipq-rel-cluster-"))
    (root / "kafka").mkdir()
    (root / "kafka" / "lib").symlink_to(KAFKA_LIB)
    cluster = LocalKafkaCluster.plan(free_consecutive_ports(3), 3, ChipqHome(root), heap="384m")
    try:
        cluster.start(quiet=True)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------ the soak


@dataclass
class SoakResult:
    seconds: float
    acked: set[str]
    publish_errors: list[str]
    samples: list[tuple[float, float]]  # (seconds since start, follower RSS in MB)
    follower_rc: int | None
    follower_summary: str
    final_catch_up: subprocess.CompletedProcess[str]


class Soak:
    """A steady stream for ``duration`` s into a pipeline kept up by `chipq catch-up --follow`, RSS sampled.

    It runs alongside the other reliability tests (so the suite's wall time is
    the longer of the two, not their sum); ``finish`` waits for the end of the
    stream, stops the follower with SIGTERM, runs one last catch-up and
    returns what happened.
    """

    def __init__(self, env: PipelineEnv, duration: float, log: Path) -> None:
        self.env, self.duration, self.log = env, duration, log
        self.rate = SOAK_RATE
        self.stop = threading.Event()
        self.acked: set[str] = set()
        self.publish_errors: list[str] = []
        self.samples: list[tuple[float, float]] = []
        self.follower: subprocess.Popen[bytes] | None = None
        self.threads: list[threading.Thread] = []
        self.started = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        with open(self.log, "ab") as out:
            self.follower = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "chipq_pipelines.cli",
                    "catch-up",
                    "--follow",
                    "--interval",
                    str(SOAK_INTERVAL_S),
                ],
                env={**os.environ, **self.env.env},
                cwd=REPO_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.threads = [
            threading.Thread(target=self._publish, name="soak-publisher", daemon=True),
            threading.Thread(target=self._sample, name="soak-sampler", daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _publish(self) -> None:
        batch = max(1, self.rate // 4)
        sent = 0
        try:
            with SyncInspectionEventProducer(self.env.kafka_config, topic=self.env.inspection_topic) as producer:
                while not self.stop.is_set() and time.monotonic() - self.started < self.duration:
                    ok, failed = publish_acked(producer, make_events(batch, f"SOAK{sent // batch}"))
                    self.acked |= ok
                    if failed:
                        self.publish_errors.append(f"{len(failed)} not acknowledged")
                    sent += batch
                    self.stop.wait(max(0.0, self.started + sent / self.rate - time.monotonic()))
        except Exception as exc:  # reported by the soak test
            self.publish_errors.append(f"publisher died: {type(exc).__name__}: {exc}")

    def _sample(self) -> None:
        assert self.follower is not None
        # Past the follower's start-up (imports, first Dagster instance), then a sample every 5 s
        # (more often in a soak shorter than 100 s, so that it still gets a dozen or more).
        self.stop.wait(min(15.0, self.duration / 4))
        every = min(5.0, self.duration / 20)
        while not self.stop.is_set() and self.follower.poll() is None:
            try:
                self.samples.append((time.monotonic() - self.started, rss_mb(self.follower.pid)))
            except (FileNotFoundError, ProcessLookupError):
                return
            self.stop.wait(every)

    def finish(self) -> SoakResult:
        assert self.follower is not None
        self.threads[0].join(timeout=max(0.0, self.duration - (time.monotonic() - self.started)) + 120)
        self.stop.set()
        self.threads[1].join(timeout=30)
        seconds = time.monotonic() - self.started
        rc = self.terminate()
        lines = self.log.read_text(errors="replace").splitlines()
        summary = next((line for line in reversed(lines) if line.startswith("stopped after")), "")
        final = catch_up_subprocess(self.env)
        return SoakResult(
            seconds=seconds,
            acked=set(self.acked),
            publish_errors=list(self.publish_errors),
            samples=list(self.samples),
            follower_rc=rc,
            follower_summary=summary,
            final_catch_up=final,
        )

    def terminate(self) -> int | None:
        self.stop.set()
        if self.follower is None:
            return None
        if self.follower.poll() is None:
            self.follower.send_signal(signal.SIGTERM)
            try:
                self.follower.wait(timeout=180)
            except subprocess.TimeoutExpired:
                self.follower.kill()
                self.follower.wait(timeout=30)
        return self.follower.returncode


@pytest.fixture(scope="session", autouse=True)
def soak(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Soak | None]:
    """The background soak, started with the session's first reliability test when the soak test is selected."""
    if not any(item.name == SOAK_TEST for item in request.session.items):
        yield None
        return
    bootstrap = request.getfixturevalue("kafka_bootstrap")
    root = tmp_path_factory.mktemp("soak")
    # No env vars set: the follower subprocess gets the pipeline's ``env.env``.
    running = Soak(PipelineEnv.create(bootstrap, root / "chipq"), SOAK_SECONDS, root / "follower.log")
    running.start()
    try:
        yield running
    finally:
        running.terminate()


# ------------------------------------------------------------------ events and counting


SEVERITIES = ["LOW", "MEDIUM", "HIGH", "CRITICAL"]


def make_events(count: int, lot_prefix: str = "REL", *, when: dt.datetime | None = None) -> list[dict[str, Any]]:
    """``count`` valid inspection events (created + completed pairs) with fresh event ids."""
    when = when or dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    events = []
    for i in range(count):
        lot = f"{lot_prefix}-LOT-{i // 200}"
        inspection = f"{lot}/INS-{i // 2}"
        completed = i % 2 == 1
        events.append(
            {
                "event_id": str(uuid.uuid4()),
                "event_type": "INSPECTION_COMPLETED" if completed else "INSPECTION_CREATED",
                "event_time": when + dt.timedelta(seconds=i % 3000),
                "inspection_id": inspection,
                "batch_id": lot,
                "chip_id": f"{inspection}/C",
                "wafer_id": f"{lot}/W{i % 25:02d}",
                "station_id": f"AOI-{i % 3}",
                "inspection_type": "optical",
                "status": "completed" if completed else "pending",
                "quality_score": 0.6 + (i % 40) / 100 if completed else None,
                "defects": (
                    [
                        {
                            "defect_type": "particle",
                            "severity": SEVERITIES[i % 4],
                            "confidence": 0.9,
                            "location": {"x": 1.0, "y": -2.0},
                        }
                    ]
                    if completed and i % 7 == 0
                    else []
                ),
                "metadata": {"recipe": "r1"},
            }
        )
    return events


def publish(env: PipelineEnv, events: list[dict[str, Any]], config: KafkaConfig | None = None) -> set[str]:
    """Publish through the events library; returns the event ids Kafka acknowledged (raises on any failure)."""
    with SyncInspectionEventProducer(config or env.kafka_config, topic=env.inspection_topic) as producer:
        producer.publish_batch(events, key_fn=lambda e: e["inspection_id"])
    return {e["event_id"] for e in events}


def publish_acked(producer: SyncInspectionEventProducer, events: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """(acknowledged ids, not acknowledged ids) of one batch; a PublishError lists the failed indices."""
    ids = [e["event_id"] for e in events]
    try:
        producer.publish_batch(events, key_fn=lambda e: e["inspection_id"])
    except PublishError as exc:
        failures = exc.failures
        if not failures:  # no per-event outcome: nothing of the batch is known to be delivered
            return set(), set(ids)
        failed = {ids[i] for i, _ in failures}
        return set(ids) - failed, failed
    return set(ids), set()


@dataclass
class Tally:
    landed_rows: int
    landed_ids: int
    lost: int
    duplicated: int
    unexpected: int
    rejected: int
    reasons: Counter[str]
    offsets_landed: dict[int, int]


def tally(env: PipelineEnv, published: set[str]) -> Tally:
    """Lost/duplicated of ``published`` ids, read from the warehouse (no writer may be running)."""
    conn = duckdb.connect(str(env.warehouse), read_only=True)
    try:
        counts = dict(
            conn.execute(
                # the pipeline's own canaries (the 5-minute flow probe under the daemon) are not test events
                "SELECT event_id, count(*) FROM raw.inspection_events WHERE kafka_topic = ? AND NOT is_canary "
                "GROUP BY event_id",
                [env.inspection_topic],
            ).fetchall()
        )
        reasons = Counter(
            dict(
                conn.execute(
                    "SELECT reason, count(*) FROM ops.rejected_events WHERE topic = ? GROUP BY reason",
                    [env.inspection_topic],
                ).fetchall()
            )
        )
        offsets = dict(
            conn.execute(
                "SELECT partition, next_offset FROM ops.ingested_offsets WHERE topic = ?", [env.inspection_topic]
            ).fetchall()
        )
    finally:
        conn.close()
    unexpected = sum(n for i, n in counts.items() if i not in published)
    return Tally(
        landed_rows=sum(counts.values()),
        landed_ids=sum(1 for i in counts if i in published),
        lost=sum(1 for i in published if i not in counts),
        duplicated=sum(n - 1 for n in counts.values() if n > 1) + unexpected,
        unexpected=unexpected,
        rejected=sum(reasons.values()),
        reasons=reasons,
        offsets_landed={int(p): int(o) for p, o in offsets.items()},
    )


def high_watermarks(config: KafkaConfig, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer(config.librdkafka_config(**{"group.id": f"rel-watermarks-{uuid.uuid4().hex[:6]}"}))
    deadline = time.monotonic() + 60
    try:
        while True:  # a new topic (or a restarted broker) may not have its leaders yet
            try:
                partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
                return {
                    p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
                    for p in partitions
                }
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        consumer.close()


def catch_up_in_process(echo: Callable[[str], None] | None = None, max_rounds: int = 10_000) -> Any:
    from chipq_pipelines.definitions import build_defs
    from chipq_pipelines.runner import catch_up

    return catch_up(defs=build_defs(), echo=echo or (lambda _line: None), max_rounds=max_rounds)


def catch_up_until_ok(deadline_s: float = 120.0) -> tuple[Any, list[str]]:
    """Catch up until a round ends without error (or the deadline passes): (last report or None, errors)."""
    errors: list[str] = []
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return catch_up_in_process(), errors
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            if time.monotonic() > deadline:
                return None, errors
            time.sleep(1.0)


def count_publisher_row(row: Row, env: PipelineEnv, acked: set[str], failed: set[str]) -> None:
    """Fill ``row`` for a stream whose producer reported ``acked`` and ``failed`` ids.

    Sent and lost count only what Kafka acknowledged; rejected and duplicated count every id sent
    (a record the producer gave up on may still have landed, once).
    """
    everything = tally(env, acked | failed)
    acknowledged = tally(env, acked)
    row.sent = len(acked)
    row.landed = acknowledged.landed_ids
    row.rejected = everything.rejected
    row.lost = acknowledged.lost
    row.duplicated = everything.duplicated


def catch_up_subprocess(env: PipelineEnv, timeout: float = 300, **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chipq_pipelines.cli", "catch-up"],
        env={**os.environ, **env.env, **extra_env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def rss_mb(pid: int | None = None) -> float:
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture
def rel() -> SimpleNamespace:
    """The suite's helpers (see this module)."""
    return SimpleNamespace(
        make_events=make_events,
        publish=publish,
        publish_acked=publish_acked,
        tally=tally,
        count_publisher_row=count_publisher_row,
        high_watermarks=high_watermarks,
        catch_up=catch_up_in_process,
        catch_up_until_ok=catch_up_until_ok,
        catch_up_subprocess=catch_up_subprocess,
        rss_mb=rss_mb,
        kafka_lib=KAFKA_LIB,
    )
