"""Pipeline throughput vs a bare consume → decode → DuckDB script, same broker, same data, same run.

    .venv/bin/python benchmarks/pipeline_bench.py --events 100000
    .venv/bin/python benchmarks/pipeline_bench.py --events 100000 --bootstrap 127.0.0.1:9092

Without ``--bootstrap`` a local broker (cached jars under ``$CHIPQ_HOME/kafka/lib``)
is started on a free port in a temp dir and stopped at the end, also on error or
Ctrl-C. Everything else is isolated as well: fresh topics and pipeline group,
``CHIPQ_HOME`` and ``DAGSTER_HOME`` in a temp dir (removed unless ``--keep``).

1. Pipeline: ``generate(N)`` + ``publish_simulation`` (realistic stream with its
   duplicates, late events and poison records), then one timed ``catch_up``:
   the offsets sensor and pipeline_cycle runs (effectively-once landing, the
   touched mart partitions, alerts, the analyst snapshot). The ingest-only
   figure is the sum of the raw__* steps' durations from the Dagster event log.
2. Bare baseline on the same topic: confluent_kafka ``assign`` + ``consume``
   batches → fastavro ``schemaless_reader`` (10-byte single-object header
   skipped, writer schema from ``schemas/`` by fingerprint) → one list per
   column → ``pa.Table.from_pydict`` → DuckDB ``INSERT INTO … SELECT … FROM``
   the Arrow table, into a fresh file. No dedupe, no offsets, no validation.
3. Produce-to-snapshot latency: one event at a time, published (ack), then
   ``catch_up``, until the event is visible through ``query_snapshot``. This is
   the in-process catch-up driver's latency; under the daemon see
   ``benchmarks/latency_bench.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import io
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import duckdb
import pyarrow as pa
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from fastavro import parse_schema, schemaless_reader
from fastavro.schema import fingerprint, to_parsing_canonical_form

from chipq_pipelines.environment import PIPELINE_ENV_VARS, PipelineEnv
from chipq_pipelines.paths import REPO_ROOT
from chipq_pipelines.runner import catch_up
from chipq_pipelines.warehouse.columns import DEFECT_SCHEMA, INSPECTION_SCHEMA, LANDING_COLUMNS

SCHEMAS_DIR = REPO_ROOT / "schemas"
PARTITIONS = 3
BARE_BATCH = 10_000


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ broker


@contextlib.contextmanager
def kafka_broker(bootstrap: str | None, root: Path) -> Iterator[tuple[str, str]]:
    """Yield (bootstrap, description); a broker started here is stopped on any exit."""
    if bootstrap:
        from chipq_pipelines.local_kafka import metadata_answers

        if not metadata_answers(bootstrap, timeout=10):
            raise SystemExit(f"--bootstrap {bootstrap} does not answer metadata requests")
        yield bootstrap, f"existing broker at {bootstrap}"
        return
    from chipq_pipelines.local_kafka import LocalKafka, free_port, kafka_version

    # The jar cache of the user's CHIPQ_HOME (default: the repo's .chipq), read before we isolate it.
    home = Path(os.environ.get("CHIPQ_HOME") or REPO_ROOT / ".chipq").resolve()
    lib_dir = home / "kafka" / "lib"
    broker = LocalKafka(port=free_port(), instance_dir=root / "kafka", lib_dir=lib_dir)
    log(f"starting a local broker on {broker.bootstrap} (jars {lib_dir})")
    try:
        broker.start(quiet=True)
        yield broker.bootstrap, f"Apache Kafka {kafka_version(lib_dir)} (local KRaft, heap {broker.heap}, started here)"
    finally:
        if broker.stop():
            log("local broker stopped")


# ------------------------------------------------------------------ pipeline env


def make_env(bootstrap: str, root: Path) -> PipelineEnv:
    env = PipelineEnv.create(bootstrap, root / "chipq", prefix="bench-", partitions=PARTITIONS)
    env.apply()
    time.sleep(1.0)  # let partition leaders settle
    return env


# ------------------------------------------------------------------ 1. pipeline


@dataclass
class PipelineResult:
    lots: int
    records: int  # records on the inspection topic (events, duplicates, poison)
    published_s: float
    catch_up_s: float
    report: Any
    runs: dict[str, tuple[int, float]] = field(default_factory=dict)  # step → (count, summed step seconds)
    landed: int = 0
    rejected: int = 0


def run_durations(instance: Any) -> dict[str, tuple[int, float]]:
    """Per step (raw__inspection_events, ops__alert_outbox, ...) of the successful runs: count and summed seconds."""
    import dagster as dg

    out: dict[str, tuple[int, float]] = {}
    for record in instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS])):
        for entry in instance.all_logs(record.dagster_run.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS):
            event = entry.dagster_event
            name = event.step_key
            count, seconds = out.get(name, (0, 0.0))
            out[name] = (count + 1, seconds + event.event_specific_data.duration_ms / 1000)
    return out


def pipeline_throughput(
    env: PipelineEnv, events: int, seed: int, quiet: Callable[[str], None], events_per_lot: int
) -> PipelineResult:
    import dagster as dg

    from chipq_pipelines.definitions import build_defs
    from chipq_pipelines.events.config import KafkaConfig
    from chipq_pipelines.simulate import generate, publish_simulation
    from chipq_pipelines.warehouse.snapshot import query_snapshot

    lots = max(1, events // events_per_lot)
    log(f"generating {events:,} simulated events in {lots:,} lots (seed {seed})")
    sim = generate(events, seed=seed, lots=lots)
    log(f"publishing {len(sim.records):,} records to {env.inspection_topic}")
    published = publish_simulation(
        sim, KafkaConfig(bootstrap_servers=env.bootstrap), topic=env.inspection_topic, progress=False
    )
    records = published.records
    del sim
    gc.collect()

    defs = build_defs()
    log("pipeline: catch_up (sensors + ingest + marts + snapshot + alerts) ...")
    started = time.perf_counter()
    report = catch_up(defs=defs, echo=quiet)
    elapsed = time.perf_counter() - started
    with dg.DagsterInstance.get() as instance:
        runs = run_durations(instance)
    counts = query_snapshot(
        env.snapshot,
        "SELECT (SELECT count(*) FROM raw.inspection_events) AS landed, "
        "(SELECT count(*) FROM ops.rejected_events) AS rejected",
    )
    return PipelineResult(
        lots=lots,
        records=records,
        published_s=published.seconds,
        catch_up_s=elapsed,
        report=report,
        runs=runs,
        landed=int(counts["landed"][0]),
        rejected=int(counts["rejected"][0]),
    )


# ------------------------------------------------------------------ 2. bare baseline

# The warehouse's own column types, without what only the pipeline adds (event_date, where and when landed).
_PIPELINE_ONLY = {"event_date", *(name for name, _ in LANDING_COLUMNS)}
BARE_EVENTS = pa.schema([f for f in INSPECTION_SCHEMA if f.name not in _PIPELINE_ONLY])
BARE_DEFECTS = pa.schema([f for f in DEFECT_SCHEMA if f.name not in _PIPELINE_ONLY])
_COPIED = [n for n in BARE_EVENTS.names if n not in ("defect_count", "metadata")]


def _uuid_as_string(schema: Any) -> Any:
    """Drop ``logicalType: uuid`` so ids decode as ``str`` (as the library does), not ``uuid.UUID``."""
    if isinstance(schema, dict):
        out = {k: _uuid_as_string(v) for k, v in schema.items()}
        if out.get("logicalType") == "uuid":
            del out["logicalType"]
        return out
    if isinstance(schema, list):
        return [_uuid_as_string(s) for s in schema]
    return schema


def writer_schemas() -> dict[bytes, Any]:
    """Parsed writer schema by the 8-byte CRC-64-AVRO fingerprint of the single-object header."""
    out = {}
    for path in sorted(SCHEMAS_DIR.glob("*.avsc")):
        schema = json.loads(path.read_text())
        canonical = to_parsing_canonical_form(parse_schema(schema, named_schemas={}))
        out[bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))] = parse_schema(
            _uuid_as_string(schema), named_schemas={}
        )
    return out


@dataclass
class BareResult:
    records: int
    decoded: int
    skipped: int
    defects: int
    seconds: float


def bare_baseline(bootstrap: str, topic: str, db_path: Path) -> BareResult:
    schemas = writer_schemas()
    started = time.perf_counter()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-bare-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "fetch.max.bytes": 52428800,
        }
    )
    ends: dict[int, int] = {}
    for p in range(PARTITIONS):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        if high > low:
            ends[p] = high
    total = sum(ends.values())  # offsets start at 0 on a fresh topic
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
    con = duckdb.connect(str(db_path))
    con.register("empty_events", BARE_EVENTS.empty_table())
    con.register("empty_defects", BARE_DEFECTS.empty_table())
    con.execute("CREATE TABLE inspection_events AS SELECT * FROM empty_events")
    con.execute("CREATE TABLE defects AS SELECT * FROM empty_defects")
    con.unregister("empty_events")
    con.unregister("empty_defects")

    read = decoded = skipped = defects_total = 0
    columns: dict[str, list[Any]] = {n: [] for n in BARE_EVENTS.names}
    defects: dict[str, list[Any]] = {n: [] for n in BARE_DEFECTS.names}

    def flush() -> None:
        nonlocal columns, defects
        if not columns["event_id"]:
            return
        events_table = pa.Table.from_pydict(columns, schema=BARE_EVENTS)
        defects_table = pa.Table.from_pydict(defects, schema=BARE_DEFECTS)
        con.register("events_batch", events_table)
        con.register("defects_batch", defects_table)
        con.execute("INSERT INTO inspection_events SELECT * FROM events_batch")
        con.execute("INSERT INTO defects SELECT * FROM defects_batch")
        con.unregister("events_batch")
        con.unregister("defects_batch")
        columns = {n: [] for n in BARE_EVENTS.names}
        defects = {n: [] for n in BARE_DEFECTS.names}

    last = time.monotonic()
    try:
        while read < total:
            messages = consumer.consume(5000, 1.0)
            if not messages:
                if time.monotonic() - last > 30:
                    raise RuntimeError(f"bare consumer stalled at {read}/{total} records")
                continue
            last = time.monotonic()
            copied = [(n, columns[n]) for n in _COPIED]
            for message in messages:
                if message.error() is not None:
                    continue
                read += 1
                raw = message.value()
                schema = schemas.get(raw[2:10]) if raw and raw[:2] == b"\xc3\x01" else None
                if schema is None:
                    skipped += 1
                    continue
                buffer = io.BytesIO(raw)
                buffer.seek(10)
                try:
                    event = schemaless_reader(buffer, schema, None)
                except Exception:
                    skipped += 1
                    continue
                decoded += 1
                for name, column in copied:
                    column.append(event.get(name))
                event_defects = event.get("defects") or []
                columns["defect_count"].append(len(event_defects))
                columns["metadata"].append(list((event.get("metadata") or {}).items()))
                for index, defect in enumerate(event_defects):
                    defects["event_id"].append(event["event_id"])
                    defects["defect_index"].append(index)
                    defects["defect_type"].append(defect["defect_type"])
                    defects["severity"].append(defect["severity"])
                    defects["confidence"].append(defect["confidence"])
                    defects["x"].append(defect["location"]["x"])
                    defects["y"].append(defect["location"]["y"])
                defects_total += len(event_defects)
            if len(columns["event_id"]) >= BARE_BATCH:
                flush()
        flush()
        con.execute("CHECKPOINT")
    finally:
        con.close()
        consumer.close()
    return BareResult(total, decoded, skipped, defects_total, time.perf_counter() - started)


# ------------------------------------------------------------------ 3. latency


@dataclass
class LatencySample:
    latency_s: float  # publish ack → first successful read of the event from the snapshot
    catch_up_s: float  # publish ack → catch_up returned (it goes on with alerts and an idle round)
    runs: int
    catch_ups: int


class SnapshotPoller(threading.Thread):
    """Notes when ``event_id`` becomes readable in the analyst snapshot, without loading the process.

    A new snapshot is renamed onto the path (new inode), so a cheap ``stat`` every
    ``interval`` s spots each publication; each new file is then read with
    ``query_snapshot`` (≈ 40 ms, so it is not polled blindly) to confirm the event.
    """

    def __init__(self, snapshot: Path, event_id: str, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.snapshot, self.event_id, self.interval = snapshot, event_id, interval
        self.seen_at: float | None = None
        self.stop = threading.Event()

    def _identity(self) -> tuple[int, int] | None:
        try:
            st = self.snapshot.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns)

    def visible(self) -> bool:
        from chipq_pipelines.warehouse.snapshot import query_snapshot

        try:
            sql = f"SELECT count(*) AS n FROM raw.inspection_events WHERE event_id = '{self.event_id}'"
            return int(query_snapshot(self.snapshot, sql)["n"][0]) == 1
        except (FileNotFoundError, duckdb.Error):
            return False

    def run(self) -> None:
        checked = None
        while not self.stop.is_set():
            identity = self._identity()
            if identity is not None and identity != checked:
                spotted = time.perf_counter()
                checked = identity
                if self.visible():
                    self.seen_at = spotted
                    return
            self.stop.wait(self.interval)


def latency_samples(env: PipelineEnv, samples: int, seed: int, quiet: Callable[[str], None]) -> list[LatencySample]:
    from chipq_pipelines.definitions import build_defs
    from chipq_pipelines.events.config import KafkaConfig
    from chipq_pipelines.events.producers import SyncInspectionEventProducer
    from chipq_pipelines.simulate import generate

    sim = generate(max(4, 2 * samples + 2), seed=seed)
    pool = [e for e in sim.events() if e["event_type"] == "INSPECTION_COMPLETED"]
    defs = build_defs()
    out = []
    with SyncInspectionEventProducer(KafkaConfig(bootstrap_servers=env.bootstrap), topic=env.inspection_topic) as p:
        for i in range(samples):
            now = dt.datetime.now(dt.UTC)
            event_id = str(uuid.uuid4())
            event = {
                **pool[i % len(pool)],
                "event_id": event_id,
                "event_time": now.replace(microsecond=now.microsecond // 1000 * 1000),
            }
            p.publish_batch([event])  # returns once Kafka acknowledged it
            acked = time.perf_counter()
            poller = SnapshotPoller(env.snapshot, event_id)
            poller.start()
            runs = catch_ups = 0
            try:
                while True:
                    report = catch_up(defs=defs, echo=quiet)
                    returned = time.perf_counter()
                    catch_ups += 1
                    runs += sum(report.runs.values())
                    poller.join(timeout=1.0)
                    if poller.seen_at is not None:
                        break
                    if returned - acked > 120:
                        raise RuntimeError(f"event {event_id} not in the snapshot 120 s after its ack")
            finally:
                poller.stop.set()
                poller.join()
            assert poller.seen_at is not None
            out.append(LatencySample(poller.seen_at - acked, returned - acked, runs, catch_ups))
            log(
                f"latency sample {i + 1}/{samples}: visible after {poller.seen_at - acked:.2f} s, "
                f"catch_up returned after {returned - acked:.2f} s ({runs} runs)"
            )
    return out


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


# ------------------------------------------------------------------ report


def versions() -> str:
    names = ("duckdb", "fastavro", "confluent-kafka", "dagster", "pyarrow", "pandas")
    parts = []
    for name in names:
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} ?")
    return ", ".join(parts)


def machine() -> list[str]:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"machine   {platform.machine()}, nproc {cpus}, {platform.system()} {platform.release()}",
        f"python    {platform.python_version()} ({sys.executable})",
        f"packages  {versions()}",
        f"load avg  {load} (1/5/15 min; other jobs share this machine: figures vary ±20 % or more)",
    ]


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:>12,.0f}" if seconds > 0 else f"{'-':>12}"


def print_throughput(broker: str, env: PipelineEnv, pipe: PipelineResult, bare: BareResult) -> tuple[float, float]:
    """Print the throughput table; return the (ingest, catch-up) rates divided by the bare rate."""
    report = pipe.report
    n = pipe.records
    ingest_jobs = [j for j in pipe.runs if j.startswith("raw__")]
    ingest_runs = max((pipe.runs[j][0] for j in ingest_jobs), default=0)
    ingest_s = sum(pipe.runs[j][1] for j in ingest_jobs)
    inspection_ingest = pipe.runs.get("raw__inspection_events", (0, 0.0))
    all_runs_s = sum(s for _, s in pipe.runs.values())
    lines = ["", "chipq pipeline benchmark", "=" * 96, *machine(), f"broker    {broker}"]
    lines.append(
        f"data      {n:,} records on {env.inspection_topic} ({PARTITIONS} partitions): "
        f"generate()+publish_simulation, published in {pipe.published_s:.1f} s"
    )
    lines.append(
        f"          {pipe.lots:,} lots of ~{n // max(pipe.lots, 1):,} records (--events-per-lot; Dagster stores two "
        "events per lot partition a run rewrites, ~40 ms each on SQLite)"
    )
    lines.append(
        f"          landed {pipe.landed:,} unique events, {report.duplicates_skipped:,} duplicates skipped, "
        f"{pipe.rejected:,} poison records rejected (effectively once)"
    )
    lines += ["", "1-2. throughput (same broker, same records, one run)", "-" * 96]
    lines.append(f"{'path':<62}{'seconds':>10}{'records/s':>12}{'runs':>6}")

    def row(label: str, seconds: float, runs: int | str = "") -> None:
        lines.append(f"{label:<62}{seconds:>10.2f}{rate(n, seconds)}{runs!s:>6}")

    row("pipeline: catch_up total (sensor + pipeline_cycle runs)", pipe.catch_up_s, sum(report.runs.values()))
    row("  ingest steps only (land + rewrite touched marts; step durations)", ingest_s, ingest_runs)
    if inspection_ingest[0]:
        row("    of which raw__inspection_events", inspection_ingest[1], inspection_ingest[0])
    for job, (count, seconds) in sorted(pipe.runs.items()):
        if job not in ingest_jobs:
            lines.append(f"{'  ' + job + ' steps':<62}{seconds:>10.2f}{'':>12}{count:>6}")
    lines.append(f"{'  driver + run overhead (total - steps)':<62}{pipe.catch_up_s - all_runs_s:>10.2f}")
    row("bare: consume → fastavro → columns → Arrow → DuckDB INSERT", bare.seconds)
    lines.append(
        f"          bare decoded {bare.decoded:,} records ({bare.defects:,} defects), skipped {bare.skipped:,} "
        "undecodable; no dedupe, no offsets, no validation, no Dagster"
    )
    lines.append("")
    lines.append(f"ratio pipeline/bare, catch_up total:  {bare.seconds / pipe.catch_up_s:.2f}")
    if ingest_s:
        lines.append(f"ratio pipeline/bare, ingest only:     {bare.seconds / ingest_s:.2f}")
    print("\n".join(lines), flush=True)
    return (bare.seconds / ingest_s if ingest_s else 0.0), bare.seconds / pipe.catch_up_s


def print_latency(pipe: PipelineResult, lat: list[LatencySample]) -> None:
    lines = []
    if lat:
        visible = [s.latency_s for s in lat]
        returned = [s.catch_up_s for s in lat]
        lines += ["", f"3. produce-to-snapshot latency ({len(lat)} samples, one event at a time)", "-" * 96]
        lines.append(f"{'':<62}{'p50 s':>8}{'p95 s':>8}{'min s':>8}{'max s':>8}")
        for label, values in (
            ("publish ack → event readable via query_snapshot", visible),
            ("publish ack → catch_up returned (+ alerts run, idle round)", returned),
        ):
            lines.append(
                f"{label:<62}{percentile(values, 50):>8.2f}{percentile(values, 95):>8.2f}"
                f"{min(values):>8.2f}{max(values):>8.2f}"
            )
        mean_runs = statistics.fmean(s.runs for s in lat)
        lines.append(
            f"per sample {mean_runs:.1f} runs (ingest, defect_rates day, lot_quality lot, snapshot, alerts); "
            f"warehouse {pipe.landed:,}+ events"
        )
        lines.append("readable = a watcher stats the snapshot file every 20 ms and runs query_snapshot on each new one")
        lines.append(
            "NOTE: this is the latency of the in-process catch-up driver (`chipq catch-up` run right after the "
            "publish). With dagster-daemon add up to the sensor interval (10-15 s) plus run launch (seconds)."
        )
    print("\n".join(lines), flush=True)


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="simulated events to publish (default 100000)")
    parser.add_argument("--bootstrap", help="an existing broker; default: start a local one and stop it at the end")
    parser.add_argument("--latency-samples", type=int, default=10, help="produce-to-snapshot samples (default 10)")
    parser.add_argument("--seed", type=int, default=20250106)
    parser.add_argument(
        "--events-per-lot",
        type=int,
        default=32_000,
        help="lot size in events (default 32000: 25 wafers x 640 dies, created + completed; the demo uses 400)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (warehouse, Dagster runs) afterwards")
    parser.add_argument("--verbose", action="store_true", help="print catch_up's per-run lines")
    args = parser.parse_args()
    if args.events < 2:
        parser.error("--events must be at least 2")

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    warnings.filterwarnings("ignore", message=r".*is currently in (beta|preview)")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    quiet: Callable[[str], None] = (lambda m: log(m.strip())) if args.verbose else (lambda m: None)
    saved_env = {name: os.environ.get(name) for name in PIPELINE_ENV_VARS}
    root = Path(tempfile.mkdtemp(prefix="chipq-pipeline-bench-"))
    try:
        with kafka_broker(args.bootstrap, root) as (bootstrap, broker):
            env = make_env(bootstrap, root)
            pipe = pipeline_throughput(env, args.events, args.seed, quiet, args.events_per_lot)
            log(f"pipeline: {pipe.records:,} records in {pipe.catch_up_s:.1f} s; bare baseline ...")
            bare = bare_baseline(bootstrap, env.inspection_topic, root / "bare.duckdb")
            log(f"bare: {bare.records:,} records in {bare.seconds:.1f} s")
            ingest_ratio, catch_up_ratio = print_throughput(broker, env, pipe, bare)
            if args.latency_samples > 0:
                print_latency(pipe, latency_samples(env, args.latency_samples, args.seed + 1, quiet))
            # Rates divided by the bare rate (same records): above 1 means faster than the bare loop.
            print(f"pipeline vs bare: ingest {ingest_ratio:.2f}, catch-up {catch_up_ratio:.2f}", flush=True)
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        raise SystemExit(130) from None
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
