"""How fresh the analysts' view is under the real Dagster daemon, as a user sees it.

    .venv/bin/python benchmarks/latency_bench.py                                # the full run (~15 min)
    .venv/bin/python benchmarks/latency_bench.py --history 20000 --seconds 30   # a quick look
    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 .venv/bin/python benchmarks/latency_bench.py

1. Broker: the one named by ``KAFKA_BOOTSTRAP_SERVERS``, else a local KRaft broker
   started here (jars cached under ``$CHIPQ_HOME/kafka/lib``, default ``./.chipq``;
   a free port unless ``--kafka-port``; data in the temp dir) and stopped at the end.
2. An isolated pipeline (``PipelineEnv.create``): fresh topics (3 partitions) and
   consumer group, ``CHIPQ_HOME`` and ``DAGSTER_HOME`` in a temp dir (removed at the
   end unless ``--keep``; kept, with the daemon's log, when the bench fails).
3. History, landed before anything is measured: ``generate(--history)`` (lots of
   ``--events-per-lot``, ending about now, with the simulator's duplicates, late
   events and poison records), ``publish_simulation``, then ``chipq catch-up`` in a
   subprocess with the pipeline's environment.
4. ``dagster-daemon run -w workspace.yaml`` (``--ui``: ``dagster dev``) from the repo
   root; the bench waits until the daemon is idle (its first sensor ticks after the
   catch-up re-request the history's marts) before it streams: no run in flight
   and none finished in the last 35 s (the slowest sensor ticks every 30 s).
5. ``--rate`` INSPECTION_COMPLETED events per second for ``--seconds``, through
   ``SyncInspectionEventProducer`` (key: inspection_id, so a lot spreads over the
   partitions): event_time = now, a new lot every ``--events-per-lot`` events, 25
   wafers per lot, a unique inspection and chip per event, score/defects/station
   taken from simulated events. The acknowledgement time of every event_id is
   recorded (batches go out every 20 ms; an event's ack is its batch's).
6. Every ``--poll`` s the bench looks at ``$CHIPQ_HOME/analytics.duckdb``. When the
   link points to a new file (target, mtime, size) it runs ONE ``query_snapshot``
   (one consistent moment) returning only what is new: raw rows of the streamed
   lots with ``landing_seq`` above the last one seen (zone maps skip the history),
   the streamed lots' rows of ``marts.lot_quality_scores`` and the rows of
   ``marts.defect_rates`` from the stream's first day on. The time an event is
   "visible" is the start of the first poll that shows it, so a figure includes up
   to one poll interval of the user's own polling.
7. After the stream, up to ``--wait`` s (120) for every event to be visible in all
   three, then a table per component (p50/p95/max) and, as the LAST line::

       latency daemon: p50 X.X s, p95 X.X s, max X.X s over N events

   latency = max over raw / lot mart / day mart of (first visible - produce ack).
   An event never visible makes the bench say so and exit 1.

How a mart row is attributed to events (exact, checked on every run)
---------------------------------------------------------------------
A mart row is a count, not a list of event ids. Every landing is one DuckDB
transaction numbered by one ``landing_seq`` from a sequence, and the warehouse has
one writer at a time, so ``landing_seq`` order is commit order. A mart partition
rewrite reads a committed state: it covers exactly the lot's (day's) rows with
``landing_seq`` up to some value, and the snapshot that shows the rewrite holds all
of those rows in raw. Every streamed event has its own inspection_id and chip_id,
so each adds exactly one to its lot's ``inspections_completed`` and one to its
day's ``chips_inspected`` (a day's count minus the distinct chips the day had in
raw before the stream). Hence a lot count of c means: the first c of the lot's
events in ``landing_seq`` order are in the mart; same for days. (Counting "the lot
reached the number of its events acknowledged up to this one" would be inexact:
the lot's events spread over 3 partitions and ack order is not landing order.) A
count that would split one landing, or exceed what raw shows, cannot happen under
this reasoning; it is counted as an anomaly and credited conservatively (only
whole landings below it). At the end the bench checks that raw holds every
streamed event once and that both marts' counts equal the events produced.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as dt
import gc
import os
import platform
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chipq_pipelines.environment import PIPELINE_ENV_VARS, PipelineEnv
from chipq_pipelines.paths import REPO_ROOT

PARTITIONS = 3
WAFERS_PER_LOT = 25
SEND_EVERY_S = 0.02  # the producer sends what is due at most every 20 ms
MAX_BATCH = 2_000  # a producer that fell behind catches up in batches of at most this many
PROGRESS_EVERY_S = 10.0
SETTLE_MIN_S = 40.0  # the daemon runs at least this long before the stream starts
SETTLE_QUIET_S = 35.0  # ... and no run ended in the last 35 s (slowest sensor interval: 30 s)
SETTLE_MAX_S = 900.0
COMPONENTS = ("raw", "lot", "day")
LABELS = {
    "raw": "raw.inspection_events (event_id)",
    "lot": "marts.lot_quality_scores (lot count)",
    "day": "marts.defect_rates (day chips)",
}


def log(message: str) -> None:
    print(f"[latency {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """The bench could not measure (broker, catch-up, daemon or producer failed)."""


class Cleanup:
    """What to stop, newest first; run from ``finally`` and again (then a no-op) at exit."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, name: str, step: Callable[[], object]) -> None:
        self._steps.append((name, step))

    def run(self) -> None:
        while self._steps:
            name, step = self._steps.pop()
            try:
                step()
            except (Exception, KeyboardInterrupt) as exc:  # go on with the rest whatever happens
                log(f"cleanup: stopping {name} failed: {exc!r}")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


# ------------------------------------------------------------------ broker


def start_broker(port: int | None, root: Path, cleanup: Cleanup) -> tuple[str, str]:
    """(bootstrap, description): KAFKA_BOOTSTRAP_SERVERS if set, else a broker started here (stopped by cleanup)."""
    from chipq_pipelines.local_kafka import LocalKafka, LocalKafkaError, free_port, kafka_version, metadata_answers

    existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if existing:
        if not metadata_answers(existing, timeout=10):
            raise BenchError(f"KAFKA_BOOTSTRAP_SERVERS={existing} does not answer metadata requests")
        return existing, f"existing broker at {existing} (KAFKA_BOOTSTRAP_SERVERS)"
    # The jar cache of the user's CHIPQ_HOME (default: the repo's .chipq), read before we isolate it.
    lib_dir = Path(os.environ.get("CHIPQ_HOME") or REPO_ROOT / ".chipq").resolve() / "kafka" / "lib"
    broker = LocalKafka(port=port or free_port(), instance_dir=root / "kafka", lib_dir=lib_dir)

    def stop() -> None:
        if broker.stop():
            log(f"local broker on {broker.bootstrap} stopped")

    cleanup.push("the local broker", stop)
    log(f"starting a local broker on {broker.bootstrap} (jars {lib_dir}; fetched with Maven if missing)")
    try:
        broker.start(quiet=True)
    except LocalKafkaError as exc:
        raise BenchError(str(exc)) from exc
    return broker.bootstrap, f"Apache Kafka {kafka_version(lib_dir)} (local KRaft on {broker.bootstrap}, started here)"


# ------------------------------------------------------------------ history


@dataclass
class History:
    events: int
    lots: int
    records: int
    first_event_time: dt.datetime | None = None
    last_event_time: dt.datetime | None = None
    generate_s: float = 0.0
    publish_s: float = 0.0
    catch_up_s: float = 0.0
    catch_up_summary: str = ""
    landed: int = 0


def run_logged(cmd: list[str], label: str, cleanup: Cleanup) -> list[str]:
    """Run ``cmd`` (pipeline env), echo its lines as progress (a line at least every 10 s); raise on failure."""
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def kill() -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)

    cleanup.push(label, kill)
    lines: queue.Queue[str | None] = queue.Queue()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip())
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    started = time.monotonic()
    output: list[str] = []
    while True:
        try:
            line = lines.get(timeout=PROGRESS_EVERY_S)
        except queue.Empty:
            log(f"{label}: still running ({time.monotonic() - started:.0f} s)")
            continue
        if line is None:
            break
        output.append(line)
        if line.strip() and "Warning" not in line and "warnings.warn" not in line:
            log(f"{label}: {line.strip()} ({time.monotonic() - started:.0f} s)")
    if proc.wait() != 0:
        tail = "\n".join(output[-30:])
        raise BenchError(f"{label} exited with code {proc.returncode}:\n{tail}")
    return output


def land_history(env: PipelineEnv, events: int, events_per_lot: int, seed: int, cleanup: Cleanup) -> History:
    from chipq_pipelines.simulate import generate, publish_simulation
    from chipq_pipelines.simulate.publish import default_start
    from chipq_pipelines.warehouse.snapshot import query_snapshot

    lots = max(1, events // events_per_lot)
    log(f"history: generating {events:,} simulated events in {lots:,} lots (seed {seed}), ending about now")
    began = time.monotonic()
    sim = generate(events, seed=seed, lots=lots, start=default_start(events, lots))
    history = History(events, lots, len(sim.records), sim.first_event_time, sim.last_event_time)
    history.generate_s = time.monotonic() - began
    log(f"history: {history.records:,} records generated in {history.generate_s:.0f} s; publishing")
    published = publish_simulation(sim, env.kafka_config, topic=env.inspection_topic, progress=True, stream=sys.stderr)
    history.publish_s = published.seconds
    del sim, published
    gc.collect()
    log("history: landing it with `chipq catch-up` (ingest, marts, snapshot, alerts) before measuring")
    began = time.monotonic()
    output = run_logged([sys.executable, "-m", "chipq_pipelines.cli", "catch-up"], "catch-up", cleanup)
    history.catch_up_s = time.monotonic() - began
    history.catch_up_summary = next((line for line in reversed(output) if line.startswith("caught up")), "")
    counts = query_snapshot(env.snapshot, "SELECT count(*) AS n FROM raw.inspection_events")
    history.landed = int(counts["n"][0])
    log(f"history: {history.landed:,} events landed in {history.catch_up_s:.0f} s")
    return history


# ------------------------------------------------------------------ daemon


_UNFINISHED_STATUSES = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")


class Daemon:
    """``dagster-daemon run`` (or ``dagster dev`` with ``ui``) in its own session, its output in ``log_path``."""

    def __init__(self, log_path: Path, ui: bool) -> None:
        self.log_path, self.ui = log_path, ui
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def name(self) -> str:
        return "dagster dev" if self.ui else "dagster-daemon"

    def start(self) -> None:
        from chipq_pipelines.local_kafka import free_port
        from chipq_pipelines.runner import ensure_dagster_home

        ensure_dagster_home()
        workspace = str(REPO_ROOT / "workspace.yaml")
        if self.ui:
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            cmd = [str(Path(sys.executable).with_name("dagster")), "dev", "-w", workspace, "-h", "127.0.0.1"]
            cmd += ["-p", str(port)]
        else:
            cmd = [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", workspace]
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=REPO_ROOT,
                env=dict(os.environ),  # os.environ carries the pipeline's env (PipelineEnv.apply)
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        log(f"{self.name} started (pid {self.proc.pid}, log {self.log_path})" + (f", UI {self.url}" if self.ui else ""))

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(
                f"{self.name} exited with code {self.proc.returncode} (log {self.log_path}):\n{self.tail()}"
            )

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGINT to its process group, SIGKILL after 30 s; then SIGKILL whatever of the group is left (run workers)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
            log(f"{self.name} stopped (exit code {proc.returncode})")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group is ours: start_new_session=True
        self.proc = None


def run_records(instance: Any, since: float) -> list[Any]:
    import dagster as dg

    after = dt.datetime.fromtimestamp(since, dt.UTC)
    return list(instance.get_run_records(dg.RunsFilter(created_after=after)))


def wait_until_idle(instance: Any, daemon: Daemon, since: float) -> tuple[float, int]:
    """Wait until the daemon has no run in flight and none ended in the last SETTLE_QUIET_S; (seconds, runs)."""
    began = time.monotonic()
    last_log = began
    while True:
        daemon.check()
        records = run_records(instance, since)
        unfinished = [r for r in records if r.dagster_run.status.value in _UNFINISHED_STATUSES]
        ends = [r.end_time or r.create_timestamp.timestamp() for r in records]
        quiet = time.time() - max([since, *ends])
        waited = time.monotonic() - began
        if waited >= SETTLE_MIN_S and not unfinished and quiet >= SETTLE_QUIET_S:
            return waited, len(records)
        if waited > SETTLE_MAX_S:
            log(f"warning: the daemon is still busy after {waited:.0f} s; streaming anyway")
            return waited, len(records)
        if time.monotonic() - last_log >= PROGRESS_EVERY_S:
            last_log = time.monotonic()
            jobs = Counter(r.dagster_run.job_name for r in records)
            done = ", ".join(f"{n} {job}" for job, n in sorted(jobs.items())) or "none yet"
            log(f"daemon warm-up {waited:.0f} s: runs {done}; {len(unfinished)} in flight, quiet for {quiet:.0f} s")
        time.sleep(2.0)


# ------------------------------------------------------------------ stream + poll


def template_events(seed: int) -> list[dict[str, Any]]:
    """Realistic completed inspections (scores, defects, stations) to take the measurable fields from."""
    from chipq_pipelines.simulate import generate

    sim = generate(4_000, seed=seed, lots=10)
    return [e for e in sim.events() if e["event_type"] == "INSPECTION_COMPLETED"]


@dataclass
class PollStats:
    polls: int = 0
    reads: int = 0  # polls that found a new snapshot file and queried it
    read_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    last_new_file: float | None = None


class Tracker:
    """Streamed events, their acks, and when each first showed in each component of the analysts' view."""

    def __init__(self, env: PipelineEnv, total: int, rate: float, events_per_lot: int, poll_s: float) -> None:
        self.env, self.total, self.rate, self.events_per_lot, self.poll_s = env, total, rate, events_per_lot, poll_s
        self.prefix = f"LAT-{uuid.uuid4().hex[:6].upper()}-"
        self.lock = threading.Lock()
        self.ids: dict[str, int] = {}
        self.ack: list[float | None] = [None] * total
        self.lot_of: list[str] = [""] * total
        self.day_of: list[str] = [""] * total
        self.seq: list[int] = [0] * total
        self.seen: dict[str, list[float | None]] = {c: [None] * total for c in COMPONENTS}
        self.visible = dict.fromkeys(COMPONENTS, 0)
        self.all_visible = 0
        self.oldest = 0  # first event (in ack order) not yet visible everywhere
        self.order: dict[str, dict[str, list[int]]] = {"lot": {}, "day": {}}  # key -> events in landing order
        self.done: dict[str, dict[str, int]] = {"lot": {}, "day": {}}  # key -> events credited so far
        self.day_base: dict[str, int] = {}
        self.watermark = 0
        self.anomalies: Counter[str] = Counter()
        self.produced = 0
        self.produce_started: float | None = None
        self.produce_ended: float | None = None
        self.produce_error: BaseException | None = None
        self.stop_producing = threading.Event()
        self.stop_polling = threading.Event()
        self.poll_error: BaseException | None = None
        self.stats = PollStats()
        self._last_identity: tuple[str, int, int] | None = None
        self.first_day = ""
        self._templates: list[dict[str, Any]] = []

    # ---------------------------------------------------------------- before the stream

    def prepare(self, seed: int) -> None:
        """Templates, and from the current snapshot: the landing watermark and each day's chips before the stream."""
        from chipq_pipelines.warehouse.snapshot import query_snapshot

        self._templates = template_events(seed)
        today = dt.datetime.now(dt.UTC).date()
        self.first_day = today.isoformat()
        days = [today + dt.timedelta(days=n) for n in range(2)]
        self.day_base = {d.isoformat(): 0 for d in days}
        if not self.env.snapshot.exists():
            return
        frame = query_snapshot(
            self.env.snapshot,
            "SELECT 'seq' AS kind, '' AS k, coalesce(max(landing_seq), 0) AS n FROM raw.inspection_events "
            "UNION ALL SELECT 'raw', CAST(event_date AS VARCHAR), count(DISTINCT chip_id) FROM raw.inspection_events "
            f"WHERE event_type = 'INSPECTION_COMPLETED' AND NOT is_canary AND event_date >= DATE '{self.first_day}' "
            "GROUP BY event_date "
            "UNION ALL SELECT 'mart', CAST(event_date AS VARCHAR), max(chips_inspected) FROM marts.defect_rates "
            f"WHERE event_date >= DATE '{self.first_day}' GROUP BY event_date",
        )
        marts: dict[str, int] = {}
        for kind, key, n in zip(frame["kind"], frame["k"], frame["n"], strict=True):
            if kind == "seq":
                self.watermark = int(n)
            elif kind == "raw":
                self.day_base[key] = int(n)
            else:
                marts[key] = int(n)
        for day, chips in marts.items():
            if chips != self.day_base.get(day, 0):
                log(f"note: defect_rates had {chips:,} chips on {day} at the start, raw {self.day_base.get(day, 0):,}")
        described = ", ".join(f"{d} {n:,}" for d, n in self.day_base.items())
        log(f"before the stream: landing_seq watermark {self.watermark}, chips per day {described}")

    # ---------------------------------------------------------------- producer

    def _event(self, index: int) -> dict[str, Any]:
        lot_no, slot = divmod(index, self.events_per_lot)
        lot = f"{self.prefix}{lot_no + 1:05d}"
        wafer = f"{lot}-W{1 + slot * WAFERS_PER_LOT // self.events_per_lot:02d}"
        template = self._templates[index % len(self._templates)]
        now = dt.datetime.now(dt.UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        event_id = str(uuid.uuid4())
        self.ids[event_id] = index
        self.lot_of[index] = lot
        self.day_of[index] = now.date().isoformat()
        return {
            "event_type": "INSPECTION_COMPLETED",
            "event_id": event_id,
            "correlation_id": str(uuid.uuid4()),
            "event_time": now,
            "inspection_id": f"{self.prefix}INS-{index + 1:07d}",
            "batch_id": lot,
            "chip_id": f"{wafer}-D{slot + 1:05d}",
            "wafer_id": wafer,
            "station_id": template.get("station_id"),
            "recipe_id": template.get("recipe_id"),
            "inspection_type": template["inspection_type"],
            "status": "completed",
            "quality_score": template.get("quality_score"),
            "defects": template.get("defects") or [],
            "metadata": template.get("metadata") or {},
        }

    def produce(self) -> None:
        from chipq_pipelines.events.producers import SyncInspectionEventProducer

        try:
            with SyncInspectionEventProducer(self.env.kafka_config, topic=self.env.inspection_topic) as producer:
                started = self.produce_started = time.monotonic()
                sent = 0
                while sent < self.total and not self.stop_producing.is_set():
                    due = min(self.total, int((time.monotonic() - started) * self.rate) + 1, sent + MAX_BATCH)
                    if due > sent:
                        with self.lock:
                            batch = [self._event(i) for i in range(sent, due)]
                        producer.publish_batch(batch)  # returns once Kafka acknowledged every event
                        acked = time.monotonic()
                        for i in range(sent, due):
                            self.ack[i] = acked
                        sent = self.produced = due
                    wait = max(started + sent / self.rate, time.monotonic() + SEND_EVERY_S) - time.monotonic()
                    self.stop_producing.wait(max(0.0, wait))
                self.produce_ended = time.monotonic()
        except BaseException as exc:
            self.produce_error = exc

    # ---------------------------------------------------------------- poller

    def _identity(self) -> tuple[str, int, int] | None:
        """The snapshot link's target and that file's mtime and size: a new one means a new publication."""
        path = self.env.snapshot
        try:
            target = os.readlink(path)
            st = os.stat(path)
        except OSError:
            return None
        return (target, st.st_mtime_ns, st.st_size)

    def poll_sql(self) -> str:
        return (
            "SELECT 'raw' AS kind, event_id AS k, landing_seq AS n FROM raw.inspection_events "
            f"WHERE landing_seq > {self.watermark} AND batch_id LIKE '{self.prefix}%' "
            "UNION ALL SELECT 'lot', lot_id, inspections_completed FROM marts.lot_quality_scores "
            f"WHERE lot_id LIKE '{self.prefix}%' "
            "UNION ALL SELECT 'day', CAST(event_date AS VARCHAR), max(chips_inspected) FROM marts.defect_rates "
            f"WHERE event_date >= DATE '{self.first_day}' GROUP BY event_date"
        )

    def poll_once(self) -> None:
        import duckdb

        from chipq_pipelines.warehouse.snapshot import query_snapshot

        self.stats.polls += 1
        at = time.monotonic()
        identity = self._identity()
        if identity is None or identity == self._last_identity:
            return
        try:
            frame = query_snapshot(self.env.snapshot, self.poll_sql())
        except (OSError, duckdb.Error) as exc:
            self.stats.errors.append(repr(exc))
            return
        self.stats.read_s.append(time.monotonic() - at)
        self.stats.reads += 1
        self.stats.last_new_file = at
        self._last_identity = identity
        with self.lock:
            self._apply(list(zip(frame["kind"], frame["k"], frame["n"], strict=True)), at)

    def poll(self) -> None:
        next_at = time.monotonic()
        try:
            while not self.stop_polling.is_set():
                self.poll_once()
                next_at = max(next_at + self.poll_s, time.monotonic())
                self.stop_polling.wait(max(0.0, next_at - time.monotonic()))
        except BaseException as exc:
            self.poll_error = exc

    def _mark(self, component: str, index: int, at: float) -> None:
        seen = self.seen[component]
        if seen[index] is not None:
            return
        seen[index] = at
        self.visible[component] += 1
        if all(self.seen[c][index] is not None for c in COMPONENTS):
            self.all_visible += 1

    def _apply(self, rows: list[tuple[str, str, int]], at: float) -> None:
        for n, key in sorted((int(n), key) for kind, key, n in rows if kind == "raw"):
            index = self.ids.get(key)
            if index is None:
                self.anomalies["raw row of a streamed lot with an unknown event_id"] += 1
                continue
            if self.seen["raw"][index] is not None:
                self.anomalies["event_id seen twice in raw"] += 1
                continue
            self.seq[index] = n
            self.watermark = max(self.watermark, n)
            self._mark("raw", index, at)
            self.order["lot"].setdefault(self.lot_of[index], []).append(index)
            self.order["day"].setdefault(self.day_of[index], []).append(index)
        for kind, key, n in rows:
            if kind == "lot":
                self._credit("lot", key, int(n), at)
            elif kind == "day":
                self._credit("day", key, int(n) - self.day_base.get(key, 0), at)
        while self.oldest < self.produced and all(self.seen[c][self.oldest] is not None for c in COMPONENTS):
            self.oldest += 1

    def _credit(self, component: str, key: str, count: int, at: float) -> None:
        """The first ``count`` events of lot/day ``key`` in landing order are in the mart (see the module doc)."""
        order = self.order[component].get(key, [])
        done = self.done[component].get(key, 0)
        if count > len(order):
            self.anomalies[f"{component} mart counts more events than raw shows"] += 1
            count = len(order)
        while done < count < len(order) and self.seq[order[count - 1]] == self.seq[order[count]]:
            self.anomalies[f"{component} mart count splits one landing"] += 1
            count -= 1
        if count <= done:
            return
        for index in order[done:count]:
            self._mark(component, index, at)
        self.done[component][key] = count

    # ---------------------------------------------------------------- figures

    def lag(self, now: float) -> float:
        """Age of the oldest acknowledged event not yet visible in all three (0 when none is waiting)."""
        with self.lock:
            if self.oldest >= self.produced:
                return 0.0
            acked = self.ack[self.oldest]
        return now - acked if acked is not None else 0.0

    def latencies(self, component: str | None) -> list[float]:
        """first visible - ack, per event visible in ``component`` (None: in all three, the latest of them)."""
        out = []
        for i in range(self.produced):
            acked = self.ack[i]
            if acked is None:
                continue
            if component is None:
                times = [self.seen[c][i] for c in COMPONENTS]
                if all(t is not None for t in times):
                    out.append(max(t for t in times if t is not None) - acked)
            elif (t := self.seen[component][i]) is not None:
                out.append(t - acked)
        return out

    def last_component(self) -> Counter[str]:
        """Which component showed each event last (ties: all of them)."""
        counts: Counter[str] = Counter()
        for i in range(self.produced):
            times = {c: self.seen[c][i] for c in COMPONENTS}
            if all(t is not None for t in times.values()):
                latest = max(t for t in times.values() if t is not None)
                for c, t in times.items():
                    if t == latest:
                        counts[c] += 1
        return counts

    def by_minute(self) -> list[tuple[int, int, float, float]]:
        """(minute of the stream, events, p50, max) of the all-three latency, by when the event was acknowledged."""
        buckets: dict[int, list[float]] = {}
        start = self.produce_started or 0.0
        for i in range(self.produced):
            acked = self.ack[i]
            times = [self.seen[c][i] for c in COMPONENTS]
            if acked is None or any(t is None for t in times):
                continue
            buckets.setdefault(int((acked - start) // 60), []).append(max(t for t in times if t is not None) - acked)
        return [(m + 1, len(v), percentile(v, 50), max(v)) for m, v in sorted(buckets.items())]

    def final_check(self) -> list[str]:
        """Raw holds every streamed event once; the marts' counts add up to the events produced."""
        from chipq_pipelines.warehouse.snapshot import query_snapshot

        frame = query_snapshot(
            self.env.snapshot,
            "SELECT 'raw' AS kind, count(*) AS n FROM raw.inspection_events "
            f"WHERE batch_id LIKE '{self.prefix}%' "
            "UNION ALL SELECT 'raw distinct', count(DISTINCT event_id) FROM raw.inspection_events "
            f"WHERE batch_id LIKE '{self.prefix}%' "
            "UNION ALL SELECT 'lot mart', coalesce(sum(inspections_completed), 0) FROM marts.lot_quality_scores "
            f"WHERE lot_id LIKE '{self.prefix}%' "
            "UNION ALL SELECT 'day mart', coalesce(sum(chips), 0) FROM (SELECT max(chips_inspected) AS chips "
            f"FROM marts.defect_rates WHERE event_date >= DATE '{self.first_day}' GROUP BY event_date)",
        )
        got = dict(zip(frame["kind"], (int(n) for n in frame["n"]), strict=True))
        got["day mart"] -= sum(self.day_base.get(d, 0) for d in set(self.day_of[: self.produced]))
        return [f"{name} {n:,}" + ("" if n == self.produced else " (MISMATCH)") for name, n in got.items()]


# ------------------------------------------------------------------ the run


@dataclass
class Result:
    broker: str
    env: PipelineEnv
    tracker: Tracker
    daemon: str
    daemon_log: Path
    history: History | None
    warm_up: tuple[float, int]
    stream_s: float
    drain_s: float
    runs: list[Any]
    checks: list[str]
    ui_url: str = ""

    @property
    def missing(self) -> int:
        return self.tracker.produced - self.tracker.all_visible


def stream_and_watch(tracker: Tracker, daemon: Daemon, wait_s: float) -> tuple[float, float]:
    """Produce and poll; after the stream wait up to ``wait_s`` for every event; (stream s, drain s)."""
    poller = threading.Thread(target=tracker.poll, name="poller", daemon=True)
    producer = threading.Thread(target=tracker.produce, name="producer", daemon=True)
    poller.start()
    producer.start()
    began = time.monotonic()
    last_log = began
    drain_began: float | None = None
    try:
        while True:
            time.sleep(0.25)
            daemon.check()
            if tracker.produce_error is not None:
                raise BenchError(f"the producer failed: {tracker.produce_error!r}")
            if tracker.poll_error is not None:
                raise BenchError(f"the poller failed: {tracker.poll_error!r}")
            now = time.monotonic()
            if drain_began is None and not producer.is_alive():
                drain_began = now
                log(f"stream done: {tracker.produced:,} events; waiting up to {wait_s:.0f} s for all to be visible")
            if now - last_log >= PROGRESS_EVERY_S:
                last_log = now
                progress(tracker, now, began)
            if drain_began is not None and (tracker.all_visible >= tracker.produced or now - drain_began >= wait_s):
                break
    finally:
        tracker.stop_producing.set()
        producer.join(timeout=30)
        tracker.stop_polling.set()
        poller.join(timeout=30)
    assert drain_began is not None
    ended = tracker.produce_ended or drain_began
    return ended - (tracker.produce_started or began), time.monotonic() - drain_began


def progress(tracker: Tracker, now: float, began: float) -> None:
    produced = tracker.produced
    start = tracker.produce_started or began
    rate = produced / max(1e-9, (tracker.produce_ended or now) - start)
    last = tracker.stats.last_new_file
    newest = f"newest snapshot seen {now - last:.0f} s ago" if last is not None else "no snapshot yet"
    v = tracker.visible
    log(
        f"{now - began:4.0f} s: produced {produced:,} ({rate:.0f}/s); visible raw {v['raw']:,}, lot mart "
        f"{v['lot']:,}, day mart {v['day']:,}, all three {tracker.all_visible:,}; lag {tracker.lag(now):.1f} s "
        f"(oldest event not yet visible everywhere); {newest}"
    )


def daemon_log_path(root: Path, ui: bool) -> Path:
    return root / ("dagster-dev.log" if ui else "dagster-daemon.log")


def run(args: argparse.Namespace, root: Path, cleanup: Cleanup) -> Result:
    broker, description = start_broker(args.kafka_port, root, cleanup)
    env = PipelineEnv.create(broker, root / "chipq", prefix="latbench-", partitions=PARTITIONS)
    env.apply()  # this process and every subprocess it starts now point at the isolated pipeline
    from chipq_pipelines.runner import ensure_dagster_home

    ensure_dagster_home()
    log(f"pipeline: topic {env.inspection_topic}, CHIPQ_HOME {env.home}")
    time.sleep(1.0)  # let partition leaders settle
    history = land_history(env, args.history, args.events_per_lot, args.seed, cleanup) if args.history else None

    import dagster as dg

    instance = dg.DagsterInstance.get()  # storage exists before the daemon opens it
    cleanup.push("the Dagster instance", instance.dispose)
    daemon = Daemon(daemon_log_path(root, args.ui), args.ui)
    cleanup.push(daemon.name, daemon.stop)
    daemon_started = time.time()
    daemon.start()
    warm_up = wait_until_idle(instance, daemon, daemon_started)
    log(f"daemon idle after {warm_up[0]:.0f} s ({warm_up[1]} warm-up runs); streaming")

    total = round(args.rate * args.seconds)
    tracker = Tracker(env, total, args.rate, args.events_per_lot, args.poll)
    tracker.prepare(args.seed + 1)
    stream_started = time.time()
    log(
        f"streaming {total:,} INSPECTION_COMPLETED events at {args.rate:g}/s for {args.seconds:g} s "
        f"(lots {tracker.prefix}00001.. of {args.events_per_lot:,}); polling the view every {args.poll:g} s"
    )
    stream_s, drain_s = stream_and_watch(tracker, daemon, args.wait)
    runs = run_records(instance, stream_started)
    checks = tracker.final_check() if env.snapshot.exists() else ["no snapshot"]
    return Result(
        broker=description,
        env=env,
        tracker=tracker,
        daemon=daemon.name,
        daemon_log=daemon.log_path,
        history=history,
        warm_up=warm_up,
        stream_s=stream_s,
        drain_s=drain_s,
        runs=runs,
        checks=checks,
        ui_url=daemon.url,
    )


# ------------------------------------------------------------------ report


def versions() -> str:
    parts = []
    for name in ("dagster", "duckdb", "confluent-kafka", "fastavro"):
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} ?")
    return ", ".join(parts)


def report(result: Result, args: argparse.Namespace) -> list[str]:
    t = result.tracker
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = ["", f"chipq latency benchmark: freshness of the analysts' view under {result.daemon}", "=" * 100]
    lines.append(f"machine   {platform.machine()}, nproc {cpus}, {platform.system()} {platform.release()}; load {load}")
    lines.append(f"python    {platform.python_version()}; {versions()}")
    lines.append(f"broker    {result.broker}; topic {result.env.inspection_topic} ({PARTITIONS} partitions)")
    h = result.history
    if h is not None:
        span = f"{h.first_event_time:%Y-%m-%d %H:%M} → {h.last_event_time:%Y-%m-%d %H:%M} UTC"
        lines.append(
            f"history   {h.events:,} events ({h.records:,} records with duplicates and poison) in {h.lots:,} lots, "
            f"{span}; generated {h.generate_s:.0f} s, published {h.publish_s:.0f} s"
        )
        lines.append(f"          landed by `chipq catch-up` in {h.catch_up_s:.0f} s: {h.landed:,} events in raw")
    else:
        lines.append("history   none (--history 0)")
    lines.append(
        f"daemon    {result.daemon}: idle after a {result.warm_up[0]:.0f} s warm-up ({result.warm_up[1]} runs); "
        f"log {result.daemon_log}" + (f"; UI {result.ui_url}" if result.ui_url else "")
    )
    rate = t.produced / result.stream_s if result.stream_s > 0 else 0.0
    days = sorted(set(t.day_of[: t.produced]))
    lots = len(set(t.lot_of[: t.produced]))
    lines.append(
        f"stream    {t.produced:,} INSPECTION_COMPLETED events in {result.stream_s:.1f} s ({rate:.1f}/s, asked "
        f"{args.rate:g}/s), {lots} lots of {args.events_per_lot:,}, day(s) {', '.join(days)}; then "
        f"{result.drain_s:.0f} s until {'all visible' if not result.missing else 'the wait ran out'}"
    )
    s = t.stats
    reads = f"{statistics.fmean(s.read_s) * 1000:.0f} ms mean, {max(s.read_s) * 1000:.0f} ms max" if s.read_s else "-"
    lines.append(
        f"poll      every {args.poll:g} s: {s.polls:,} polls, {s.reads:,} new snapshot files read ({reads}), "
        f"{len(s.errors)} failed reads"
    )
    if result.runs:
        jobs: dict[str, list[Any]] = {}
        for record in result.runs:
            jobs.setdefault(record.dagster_run.job_name, []).append(record)
        parts = []
        for job, records in sorted(jobs.items()):
            done = [r for r in records if r.start_time and r.end_time]
            failed = sum(r.dagster_run.status.value == "FAILURE" for r in records)
            mean_run = statistics.fmean(r.end_time - r.start_time for r in done) if done else 0.0
            mean_wait = statistics.fmean(r.start_time - r.create_timestamp.timestamp() for r in done) if done else 0.0
            parts.append(
                f"{job} {len(records)}" + (f" ({failed} FAILED)" if failed else "") + f" [launch {mean_wait:.1f} s "
                f"+ run {mean_run:.1f} s]"
            )
        lines.append("runs      since the stream began (count [mean create→start + start→end]):")
        lines += [f"          {part}" for part in parts]
    lines.append(f"checks    {'; '.join(result.checks)}")
    anomalies = "; ".join(f"{n} {what}" for what, n in sorted(t.anomalies.items())) or "none"
    lines.append(f"attribution anomalies  {anomalies}")

    lines += ["", f"latency: produce ack → first poll showing the event ({t.produced:,} events)", "-" * 100]
    lines.append(f"{'component':<46}{'visible':>10}{'p50 s':>9}{'p95 s':>9}{'max s':>9}{'min s':>9}{'mean s':>9}")
    for component in (*COMPONENTS, None):
        values = t.latencies(component)
        label = LABELS[component] if component else "all three (the latest of them)"
        if values:
            lines.append(
                f"{label:<46}{len(values):>10,}{percentile(values, 50):>9.1f}{percentile(values, 95):>9.1f}"
                f"{max(values):>9.1f}{min(values):>9.1f}{statistics.fmean(values):>9.1f}"
            )
        else:
            lines.append(f"{label:<46}{0:>10}{'-':>9}{'-':>9}{'-':>9}{'-':>9}{'-':>9}")
    last = t.last_component()
    if last:
        shares = ", ".join(f"{LABELS[c].split(' ')[0]} {100 * n / t.all_visible:.0f} %" for c, n in last.most_common())
        lines.append(f"last to show an event: {shares} (ties count for each)")
    minutes = t.by_minute()
    if minutes:
        lines.append(
            "all three by minute of the stream (p50/max s): "
            + ", ".join(f"{m}: {p50:.1f}/{top:.1f}" for m, _, p50, top in minutes)
        )
    lines.append(
        f"a figure includes the user's polling (up to {args.poll:g} s); the ack is the produce batch's (≤ 20 ms apart)"
    )
    return lines


# ------------------------------------------------------------------ main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--history", type=int, default=1_000_000, help="events landed before measuring (default 1000000; 0: none)"
    )
    parser.add_argument("--rate", type=float, default=200.0, help="streamed events per second (default 200)")
    parser.add_argument("--seconds", type=float, default=300.0, help="how long to stream (default 300)")
    parser.add_argument(
        "--events-per-lot", type=int, default=2_000, help="events per lot, history and stream (default 2000)"
    )
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between looks at the view (default 1)")
    parser.add_argument(
        "--wait", type=float, default=120.0, help="after the stream, seconds to wait for every event (default 120)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (warehouse, Dagster runs, daemon log)")
    parser.add_argument("--ui", action="store_true", help="run `dagster dev` (UI + daemon) instead of dagster-daemon")
    parser.add_argument("--kafka-port", type=int, default=None, help="port of the broker started here (default: free)")
    parser.add_argument("--seed", type=int, default=20250106, help="simulator seed (default 20250106)")
    args = parser.parse_args()
    if args.history and args.history < 2:
        parser.error("--history must be 0 or at least 2")
    if args.rate <= 0 or args.seconds <= 0 or args.poll <= 0 or args.wait < 0:
        parser.error("--rate, --seconds and --poll must be positive, --wait not negative")
    if args.events_per_lot < 1 or round(args.rate * args.seconds) < 1:
        parser.error("--events-per-lot and --rate x --seconds must be at least 1")
    return args


def main() -> int:
    args = parse_args()

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    warnings.filterwarnings("ignore", message=r".*is currently in (beta|preview)")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (`&`)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    cleanup = Cleanup()
    atexit.register(cleanup.run)  # should anything get past the finally below
    saved_env = {name: os.environ.get(name) for name in PIPELINE_ENV_VARS}
    root = Path(tempfile.mkdtemp(prefix="chipq-latency-bench-"))
    log(f"temp dir {root}")
    result: Result | None = None
    failed = False
    try:
        result = run(args, root, cleanup)
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return_code = 130
    except BenchError as exc:
        failed = True
        log(f"FAILED: {exc}")
        return_code = 1
    else:
        return_code = 1 if result.missing else 0
    finally:
        cleanup.run()
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        keep = args.keep or failed or bool(result and result.missing)
        if keep:
            log(f"kept {root}" + (f" (daemon log {daemon_log_path(root, args.ui)})" if failed else ""))
        else:
            shutil.rmtree(root, ignore_errors=True)
    if result is None:
        return return_code
    print("\n".join(report(result, args)), flush=True)
    t = result.tracker
    if result.missing:
        print(
            f"FAILED: {result.missing:,} of {t.produced:,} events not visible in all three within {args.wait:g} s "
            f"after the stream (raw {t.visible['raw']:,}, lot mart {t.visible['lot']:,}, day mart "
            f"{t.visible['day']:,}); daemon log {result.daemon_log}",
            flush=True,
        )
        return 1
    values = t.latencies(None)
    p50, p95, top = percentile(values, 50), percentile(values, 95), max(values)
    print(f"latency daemon: p50 {p50:.1f} s, p95 {p95:.1f} s, max {top:.1f} s over {len(values)} events", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
