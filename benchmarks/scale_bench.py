"""How one pipeline cycle's cost grows with the history in the warehouse.

    .venv/bin/python benchmarks/scale_bench.py
    .venv/bin/python benchmarks/scale_bench.py --sizes 1000000 4000000 --cycles 3
    .venv/bin/python benchmarks/scale_bench.py --sizes 20000 80000 --events-per-day 20000 --cycles 1  # smoke

For each size a fresh warehouse file (temp dir, removed unless ``--keep``) gets a
history built with SQL (``INSERT … SELECT … FROM range(…)``, no Kafka), at a fixed
daily rate (``--events-per-day``: a fab's daily rate does not grow with history),
appended day after day in event-time order as a live pipeline lands it, so row
groups hold narrow date ranges. Every column of raw.inspection_events and
raw.defects is filled; ops.lot_days, ops.ingested_offsets and ops.change_seq are
brought to where landing would have left them; then the warehouse's own
``rewrite_days`` and ``rewrite_lots`` (4 days at a time: ``rewrite_all_marts``, one
statement over all days, runs out of a 600MB memory_limit at 16M), one
``evaluate_into_outbox`` and two ``publish_snapshot`` make the measured cycles
steady-state cycles, not first ones.

History: 10 % INSPECTION_CREATED, 90 % INSPECTION_COMPLETED (same inspection id,
chip and Kafka partition as the CREATED before it); lots of 400 events (25
wafers), 40 lots in flight at a time; lot ids are ``LOT-`` + 8 digits in a
scrambled order, so zone maps on batch_id prune nothing by luck. Defects:
``--defects-per-event`` (default 0.4) with few CRITICAL ones. Not 1 per event:
the shipped rules warn above 0.5 defects per chip, so with 1 every lot would
alert, no lot would be in control, the SPC baseline would never freeze and the
alerts step would skip SPC (its cost would vanish from the figure).

One cycle, each step timed on its own (wall clock), in this order:

* land: ``land_batch`` of 10,000 events on the last day of history (the cycle's
  "today"), in the 40 lots most recently in flight, 1 % of them producer retries
  of events already landed that day (same event_id and event_time);
* lot: ``rewrite_lots`` of the lot the batch touched most; day: ``rewrite_days``
  of today;
* alerts: ``evaluate_into_outbox`` with the shipped rules;
* checks: ``lot_quality_counts``, ``defect_rate_counts`` and ``freshness`` (lots
  and days) for that lot and day, what the mart runs' asset checks measure;
* publish: ``publish_snapshot`` to the snapshot path.

Each size is built in one child process and measured in another (``spawn``), both
with DuckDB ``memory_limit`` and ``threads`` set; the peak RSS column is the
measuring process's ``ru_maxrss``. Figures are medians over ``--cycles`` cycles.
The last line gives each step's cost at the largest size over the smallest.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import math
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STEPS = ("publish", "land", "lot", "day", "alerts", "checks")
TOPIC = "chip-quality.inspection.events"
PARTITIONS = 3
LANDING_BLOCK = 10_000  # events per landing transaction in the history (landing_seq)
LOT_EVENTS = 400
LOTS_IN_FLIGHT = 40
MART_CHUNK_DAYS = 4  # history's marts are built this many days at a time
BATCH_EVENTS = 10_000
DUPLICATE_SHARE = 0.01
MAX_LAG_SECONDS = 600
DEFECT_TYPES = ("particle", "residue", "pattern_bridge", "void", "open", "scratch", "short", "film_peel", "edge-ring")
STATIONS = ("OPT-01", "ET-01", "SEM-01", "MAC-01")
INSPECTION_TYPES = ("optical", "electrical_test", "sem_review", "macro")


def log(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def label(n: int) -> str:
    """1000000 → 1M, 20000 → 20k, 1500000 → 1.5M."""
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size:
            return f"{n / size:g}{unit}"
    return str(n)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def open_warehouse(path: Path, memory_limit: str, threads: int) -> Any:
    from chipq_pipelines.warehouse.schema import connect, ensure_schema

    conn = connect(path)
    conn.execute(f"SET memory_limit = '{memory_limit}'")  # operator's flag, not data
    conn.execute(f"SET threads = {int(threads)}")
    conn.execute("SET preserve_insertion_order = true")
    ensure_schema(conn)
    return conn


# ------------------------------------------------------------------ history (SQL)

# One day of history: events $lo … $hi-1 of the whole stream, all on $day, evenly spaced.
# 10 consecutive events (a "group") share lot and partition; the first is the CREATED of
# the inspection the second completes. Offsets are contiguous per partition.
EVENTS_SQL = """
INSERT INTO raw.inspection_events
WITH base AS (
    SELECT
        i,
        i % 10 AS step,
        (i // 16000) * 40 + (i // 10) % 40 AS lot_seq,
        ((i % 16000) // 400) * 10 + greatest(i % 10, 1) AS die_seq,
        i - i % 10 + greatest(i % 10, 1) AS inspection_seq,
        (hash(i, 1) % 1000003) / 1000003.0 AS u1,
        (hash(i, 2) % 1000003) / 1000003.0 AS u2,
        CAST($day_start AS TIMESTAMPTZ) + to_microseconds(CAST((i - $lo) * $step_us AS BIGINT)) AS event_time,
        CAST($day_start AS TIMESTAMPTZ) + to_microseconds(CAST(
            (least(i - i % $block + $block - 1, $hi - 1) - $lo) * $step_us AS BIGINT)) + INTERVAL 3 SECOND
            AS ingested_at
    FROM range($lo, $hi) AS t(i)
),
shaped AS (
    SELECT
        *,
        'LOT-' || lpad(CAST((lot_seq * 2654435761) % 100000000 AS VARCHAR), 8, '0') AS lot_id,
        CASE WHEN step = 0 THEN 0 ELSE CAST(floor($defects_per_completed + u2) AS INTEGER) END AS defects
    FROM base
)
SELECT
    CAST(gen_random_uuid() AS VARCHAR) AS event_id,
    CASE WHEN step = 0 THEN 'INSPECTION_CREATED' ELSE 'INSPECTION_COMPLETED' END AS event_type,
    event_time,
    CAST($day AS DATE) AS event_date,
    'corr-' || inspection_seq AS correlation_id,
    'INSP-' || lpad(CAST(inspection_seq AS VARCHAR), 10, '0') AS inspection_id,
    lot_id AS batch_id,
    lot_id || '-W' || lpad(CAST(die_seq % 25 + 1 AS VARCHAR), 2, '0') || '-D' || CAST(die_seq // 25 AS VARCHAR)
        AS chip_id,
    lot_id || '-W' || lpad(CAST(die_seq % 25 + 1 AS VARCHAR), 2, '0') AS wafer_id,
    ['OPT-01', 'ET-01', 'SEM-01', 'MAC-01'][1 + inspection_seq % 4] AS station_id,
    ['optical', 'electrical_test', 'sem_review', 'macro'][1 + inspection_seq % 4] AS inspection_type,
    CASE WHEN step = 0 THEN 'pending' ELSE 'completed' END AS status,
    CASE WHEN step = 0 THEN NULL ELSE least(1.0, greatest(0.0, 0.95 - 0.04 * defects + 0.03 * (u1 - 0.5))) END
        AS quality_score,
    defects AS defect_count,
    MAP {'line': 'fab-1', 'step': 'S' || (inspection_seq % 7)} AS metadata,
    'R-' || (lot_seq % 5) AS recipe_id,
    false AS is_canary,
    $topic AS kafka_topic,
    CAST((i // 10) % 3 AS INTEGER) AS kafka_partition,
    (i // 30) * 10 + step AS kafka_offset,
    event_time + INTERVAL 200 MILLISECOND AS kafka_timestamp,
    ingested_at,
    1 + i // $block AS landing_seq
FROM shaped
ORDER BY i
"""

# The defects of the day's events (one row per defect), in the events' order.
DEFECTS_SQL = """
INSERT INTO raw.defects
WITH exploded AS (
    SELECT event_id, event_date, landing_seq, kafka_partition, kafka_offset,
           unnest(range(defect_count)) AS defect_index
    FROM raw.inspection_events
    WHERE event_date = CAST($day AS DATE) AND defect_count > 0
),
drawn AS (
    SELECT *, (hash(event_id, defect_index) % 1000003) / 1000003.0 AS u FROM exploded
)
SELECT
    event_id,
    CAST(defect_index AS INTEGER) AS defect_index,
    CAST($defect_types AS VARCHAR[])[1 + CAST(hash(event_id, defect_index, 7) % $type_count AS BIGINT)] AS defect_type,
    CASE WHEN u < 0.0005 THEN 'CRITICAL' WHEN u < 0.15 THEN 'HIGH' WHEN u < 0.45 THEN 'MEDIUM' ELSE 'LOW' END
        AS severity,
    round(0.5 + 0.499 * u, 3) AS confidence,
    round(150 * ((hash(event_id, defect_index, 8) % 1000) / 1000.0 - 0.5), 2) AS x,
    round(150 * ((hash(event_id, defect_index, 9) % 1000) / 1000.0 - 0.5), 2) AS y,
    event_date,
    landing_seq
FROM drawn
ORDER BY landing_seq, kafka_partition, kafka_offset, defect_index
"""

OPS_SQL = (
    "INSERT INTO ops.lot_days SELECT DISTINCT batch_id, event_date FROM raw.inspection_events",
    "INSERT INTO ops.ingested_offsets SELECT kafka_topic, kafka_partition, max(kafka_offset) + 1, max(ingested_at) "
    "FROM raw.inspection_events GROUP BY ALL",
    # landing would have drawn one number per transaction: move the sequence past the history's
    "SELECT max(nextval('ops.change_seq')) FROM range((SELECT max(landing_seq) FROM raw.inspection_events))",
)


def history_days(size: int, events_per_day: int) -> list[dt.date]:
    """The UTC days of the history: full days ending yesterday, so every timestamp is in the past."""
    count = -(-size // events_per_day)
    last = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    return [last - dt.timedelta(days=count - 1 - n) for n in range(count)]


def build(size: int, path: str, events_per_day: int, defects_per_event: float, memory_limit: str, threads: int) -> dict:
    """Child process: fill a fresh warehouse, rewrite the marts, evaluate alerts, publish twice."""
    from chipq_pipelines.alerts.outbox import evaluate_into_outbox
    from chipq_pipelines.rules.loader import load_rules
    from chipq_pipelines.warehouse.marts import rewrite_days, rewrite_lots
    from chipq_pipelines.warehouse.snapshot import publish_snapshot

    name = label(size)
    warehouse = Path(path) / "warehouse.duckdb"
    conn = open_warehouse(warehouse, memory_limit, threads)
    days = history_days(size, events_per_day)
    step_us = 86_400_000_000 // events_per_day
    timings: dict[str, float] = {}
    started = time.perf_counter()
    log(f"{name}: building {size:,} events over {len(days)} days with SQL (16M takes several minutes) ...")
    last_note = started
    for n, day in enumerate(days):
        lo, hi = n * events_per_day, min(size, (n + 1) * events_per_day)
        start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
        params = {"lo": lo, "hi": hi, "day": day, "day_start": start, "step_us": step_us, "block": LANDING_BLOCK}
        params |= {"topic": TOPIC, "defects_per_completed": defects_per_event * 10 / 9}
        conn.execute(EVENTS_SQL, params)
        conn.execute(DEFECTS_SQL, {"day": day, "defect_types": list(DEFECT_TYPES), "type_count": len(DEFECT_TYPES)})
        if time.perf_counter() - last_note > 30:
            last_note = time.perf_counter()
            log(f"{name}: {n + 1}/{len(days)} days, {hi:,} events, {last_note - started:.0f} s")
    for sql in OPS_SQL:
        conn.execute(sql).fetchall()
    conn.execute("CHECKPOINT")
    timings["fill"] = time.perf_counter() - started
    log(f"{name}: history filled in {timings['fill']:.1f} s; marts ({MART_CHUNK_DAYS} days at a time) ...")

    started = time.perf_counter()
    # rewrite_all_marts is one statement over every day: at 16M it runs out of a 600MB memory_limit.
    # A few days at a time (their days, then the lots on them) gives the same marts.
    for n in range(0, len(days), MART_CHUNK_DAYS):
        chunk = days[n : n + MART_CHUNK_DAYS]
        rewrite_days(conn, chunk)
        lots = conn.execute("SELECT DISTINCT lot_id FROM ops.lot_days WHERE event_date = ANY(?)", [chunk]).fetchall()
        rewrite_lots(conn, [lot for (lot,) in lots])
    timings["marts"] = time.perf_counter() - started
    started = time.perf_counter()
    evaluation = evaluate_into_outbox(conn, load_rules())
    timings["alerts"] = time.perf_counter() - started
    log(f"{name}: marts {timings['marts']:.1f} s, first alerts {timings['alerts']:.1f} s; two snapshots ...")
    started = time.perf_counter()
    for _ in range(2):
        publish_snapshot(conn, Path(path) / "snapshot.duckdb")
    timings["publish x2"] = time.perf_counter() - started
    counts = conn.execute(
        "SELECT (SELECT count(*) FROM raw.inspection_events), (SELECT count(*) FROM raw.defects), "
        "(SELECT count(*) FROM marts.lot_quality_scores), (SELECT count(*) FROM ops.alert_outbox)"
    ).fetchone()
    conn.close()
    return {
        "timings": timings,
        "events": counts[0],
        "defects": counts[1],
        "lots": counts[2],
        "alerts": counts[3],
        "baseline": evaluation.baseline_status,
        "bytes": warehouse.stat().st_size,
        "rss_mb": peak_rss_mb(),
    }


# ------------------------------------------------------------------ one cycle


def checks_call(conn: Any, lot: str, day: dt.date) -> Callable[[], None]:
    """The asset checks of a cycle (data quality and freshness of its lot and day) as one callable."""
    from chipq_pipelines.checks import quality

    def run() -> None:
        quality.lot_quality_counts(conn, [lot])
        quality.defect_rate_counts(conn, [day])
        quality.freshness(conn, "lots", MAX_LAG_SECONDS, [lot])
        quality.freshness(conn, "days", MAX_LAG_SECONDS, [day.isoformat()])

    return run


def make_batch(conn: Any, cycle: int, day: dt.date, lots: list[str]) -> tuple[list[tuple[dict, Any]], dict]:
    """10,000 events on ``day`` in ``lots``: 1 % retries of events landed that day, the rest new."""
    from chipq_pipelines.warehouse.landing import landed_offsets
    from chipq_pipelines.warehouse.samples import defect, inspection_event
    from chipq_pipelines.warehouse.types import KafkaCoordinates

    duplicates = int(BATCH_EVENTS * DUPLICATE_SHARE)
    relation = conn.execute(
        "SELECT event_id, event_type, event_time, correlation_id, inspection_id, batch_id, chip_id, wafer_id, "
        "station_id, inspection_type, status, quality_score, defect_count, metadata, recipe_id "
        "FROM raw.inspection_events WHERE event_date = ? ORDER BY hash(event_id, ?) LIMIT ?",
        [day, cycle, duplicates],
    )
    names = [d[0] for d in relation.description]
    events = []
    for row in relation.fetchall():
        event = dict(zip(names, row, strict=True))
        event["defects"] = [defect(DEFECT_TYPES[i % len(DEFECT_TYPES)]) for i in range(event.pop("defect_count"))]
        events.append(event)
    newest = conn.execute("SELECT max(event_time) FROM raw.inspection_events WHERE event_date = ?", [day]).fetchone()[0]
    window_start = max(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC), newest - dt.timedelta(hours=4))
    window_us = int((newest - window_start).total_seconds() * 1e6)
    for n in range(BATCH_EVENTS - duplicates):
        created = n % 10 == 0  # 1 in 10 is the CREATED of the inspection the next event completes
        seq = n - n % 10 + max(n % 10, 1)
        lot = lots[(n // 10) % len(lots)]
        event_time = window_start + dt.timedelta(microseconds=(n * 7919 * 104729) % max(window_us, 1))
        defects = [defect(DEFECT_TYPES[(n + k) % len(DEFECT_TYPES)]) for k in range(0 if created else n % 3 // 2)]
        events.append(
            inspection_event(
                event_type="INSPECTION_CREATED" if created else "INSPECTION_COMPLETED",
                event_time=event_time,
                correlation_id=f"corr-bench-{cycle}-{seq}",
                inspection_id=f"INSP-B{cycle}-{seq:06d}",
                batch_id=lot,
                chip_id=f"{lot}-W{seq % 25 + 1:02d}-D{100 + seq // 25}",
                wafer_id=f"{lot}-W{seq % 25 + 1:02d}",
                station_id=STATIONS[seq % 4],
                inspection_type=INSPECTION_TYPES[seq % 4],
                status="pending" if created else "completed",
                quality_score=None if created else round(0.9 + (n % 97) / 1000, 3),
                defects=defects,
                metadata={"line": "fab-1", "step": f"S{seq % 7}"},
                recipe_id=f"R-{seq % 5}",
            )
        )
    next_offsets = landed_offsets(conn, TOPIC)
    ranges = {p: [next_offsets.get(p, 0)] * 2 for p in range(PARTITIONS)}
    records = []
    for event in events:
        partition = zlib.crc32(event["inspection_id"].encode()) % PARTITIONS  # keyed by inspection
        offset = ranges[partition][1]
        ranges[partition][1] += 1
        stamp = int(event["event_time"].timestamp() * 1000) + 200
        coordinates = KafkaCoordinates(TOPIC, partition, offset, event["inspection_id"].encode(), stamp)
        records.append((event, coordinates))
    return records, {p: (start, end) for p, (start, end) in ranges.items()}


def timed(samples: list[float], func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``func`` and append its wall time to ``samples``."""
    started = time.perf_counter()
    result = func(*args, **kwargs)
    samples.append(time.perf_counter() - started)
    return result


def tolerated(samples: list[float], failures: list[str], func: Callable[..., Any], *args: Any) -> None:
    """``timed``, but a failure (code being changed under the bench) is recorded as NaN plus the error."""
    try:
        timed(samples, func, *args)
    except Exception as exc:  # reported in the output; the other steps are still worth measuring
        samples.append(math.nan)
        failures.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def median(samples: list[float]) -> float:
    """Median, NaN when any sample failed."""
    return math.nan if any(math.isnan(x) for x in samples) else statistics.median(samples)


def measure(size: int, path: str, cycles: int, memory_limit: str, threads: int) -> dict:
    """Child process: run ``cycles`` pipeline cycles on the built warehouse, timing each step."""
    from chipq_pipelines.alerts.outbox import evaluate_into_outbox
    from chipq_pipelines.rules.loader import load_rules
    from chipq_pipelines.warehouse.landing import land_batch
    from chipq_pipelines.warehouse.marts import rewrite_days, rewrite_lots
    from chipq_pipelines.warehouse.snapshot import publish_snapshot

    name = label(size)
    conn = open_warehouse(Path(path) / "warehouse.duckdb", memory_limit, threads)
    rules = load_rules()
    (today,) = conn.execute("SELECT max(event_date) FROM ops.lot_days").fetchone()
    lots = [
        row[0]
        for row in conn.execute(
            "SELECT batch_id FROM raw.inspection_events WHERE event_date = ? GROUP BY batch_id "
            "ORDER BY max(event_time) DESC, batch_id LIMIT ?",
            [today, LOTS_IN_FLIGHT],
        ).fetchall()
    ]
    samples: dict[str, list[float]] = {step: [] for step in STEPS}
    failures: dict[str, list[str]] = {step: [] for step in STEPS}
    landed: list[tuple[int, int]] = []
    run_checks: Callable[[], None] | None = None
    for cycle in range(cycles):
        records, ranges = make_batch(conn, cycle, today, lots)
        lot = Counter(e["batch_id"] for e, _ in records if e["event_type"] == "INSPECTION_COMPLETED").most_common(1)
        lot_id = lot[0][0]
        if run_checks is None:
            run_checks = checks_call(conn, lot_id, today)
        gc.collect()
        result = timed(samples["land"], land_batch, conn, topic=TOPIC, offset_ranges=ranges, inspection_events=records)
        landed.append((result.inserted_inspection_events, result.duplicates))
        timed(samples["lot"], rewrite_lots, conn, [lot_id])
        timed(samples["day"], rewrite_days, conn, [today])
        tolerated(samples["alerts"], failures["alerts"], evaluate_into_outbox, conn, rules)
        tolerated(samples["checks"], failures["checks"], run_checks)
        tolerated(samples["publish"], failures["publish"], publish_snapshot, conn, Path(path) / "snapshot.duckdb")
        log(f"{name}: cycle {cycle + 1}/{cycles}: " + ", ".join(f"{s} {samples[s][-1]:.3f} s" for s in STEPS))
    conn.close()
    return {
        "samples": samples,
        "failures": {step: sorted(set(errors)) for step, errors in failures.items() if errors},
        "landed": landed,
        "today": today,
        "rss_mb": peak_rss_mb(),
    }


# ------------------------------------------------------------------ report


def in_child(func: Callable[..., dict], *args: Any) -> dict:
    """Run ``func`` in a fresh spawned process (its own peak RSS), and wait for it to exit."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(func, *args).result()


def header(args: argparse.Namespace) -> list[str]:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    versions = []
    for package in ("duckdb", "pyarrow", "dagster"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} ?")
    return [
        "",
        "chipq scale benchmark: one pipeline cycle vs history",
        "=" * 100,
        f"machine   {platform.machine()}, {cpus} cores (of {os.cpu_count()}), {ram:.1f} GiB RAM, "
        f"{platform.system()} {platform.release()}",
        f"python    {platform.python_version()}; {', '.join(versions)}",
        f"load avg  {load} (1/5/15 min; the machine is shared: figures vary ±20 % or more)",
        f"history   {args.events_per_day:,} events a day (constant), {args.defects_per_event:g} defects per event, "
        f"lots of {LOT_EVENTS} events; DuckDB memory_limit {args.memory_limit}, threads {args.threads}",
        f"cycle     land {BATCH_EVENTS:,} events ({DUPLICATE_SHARE:.0%} retries) on the last day, rewrite 1 lot "
        f"and that day, alerts, checks, publish; median of {args.cycles} cycles per size",
    ]


def report(args: argparse.Namespace, built: dict[int, dict], measured: dict[int, dict]) -> list[str]:
    columns = ("events in raw", "build s", "publish s", "land 10k ev/s", "lot s", "day s", "alerts s", "checks s")
    lines = ["", "| " + " | ".join((*columns, "peak RSS MB")) + " |", "|" + "---:|" * (len(columns) + 1)]
    medians = {size: {s: median(m["samples"][s]) for s in STEPS} for size, m in measured.items()}
    for size in args.sizes:
        b, m = built[size], medians[size]
        build_s = sum(b["timings"].values())
        cells = [f"{size:,}", f"{build_s:.1f}", f"{m['publish']:.2f}", f"{BATCH_EVENTS / m['land']:,.0f}"]
        cells += [f"{m[s]:.3f}" for s in ("lot", "day", "alerts", "checks")]
        cells.append(f"{measured[size]['rss_mb']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for size in args.sizes:
        b, m = built[size], measured[size]
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in b["timings"].items())
        lines.append(
            f"{label(size):>5}: build = {parts}; {b['events']:,} events, {b['defects']:,} defects, "
            f"{b['lots']:,} lots, {b['alerts']:,} alerts, file {b['bytes'] / 2**20:,.0f} MiB, "
            f"build process peak RSS {b['rss_mb']:.0f} MB"
        )
        landed = ", ".join(f"{new:,} new + {dupes:,} duplicates" for new, dupes in m["landed"])
        lines.append(f"       today {m['today']}; landed per cycle: {landed}")
        spread = "; ".join(f"{s} " + "/".join(f"{x:.3f}" for x in m["samples"][s]) for s in STEPS)
        lines.append(f"       samples s: {spread}")
    for size in args.sizes:
        for step, errors in measured[size]["failures"].items():
            lines += [f"FAILED {label(size)} {step}: {error}" for error in errors]
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    lines.append(
        f"peak RSS: measuring processes max {max(m['rss_mb'] for m in measured.values()):.0f} MB, "
        f"all child processes (RUSAGE_CHILDREN) {children:.0f} MB, this parent {peak_rss_mb():.0f} MB (goal ≤ 1024)"
    )
    small, large = min(args.sizes), max(args.sizes)
    ratios = ", ".join(f"{s} {medians[large][s] / medians[small][s]:.2f}" for s in STEPS)
    lines.append(f"scale {label(large)}/{label(small)}: {ratios}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000, 16_000_000])
    parser.add_argument("--events-per-day", type=int, default=250_000, help="history's daily rate (default 250000)")
    parser.add_argument("--defects-per-event", type=float, default=0.4, help="history's mean (default 0.4)")
    parser.add_argument("--cycles", type=int, default=3, help="measured cycles per size; medians (default 3)")
    parser.add_argument("--memory-limit", default="600MB", help="DuckDB memory_limit (default 600MB)")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads (default 2)")
    parser.add_argument("--dir", type=Path, help="parent of the temp dir (default: the system's)")
    parser.add_argument("--keep", action="store_true", help="keep the warehouses and snapshots afterwards")
    args = parser.parse_args()
    if len(args.sizes) < 2 or min(args.sizes) < LOT_EVENTS * LOTS_IN_FLIGHT:
        parser.error(f"--sizes needs at least two sizes of at least {LOT_EVENTS * LOTS_IN_FLIGHT} events")
    if args.cycles < 1 or args.events_per_day < BATCH_EVENTS:
        parser.error(f"--cycles must be ≥ 1 and --events-per-day ≥ {BATCH_EVENTS}")
    if not all(c.isalnum() for c in args.memory_limit):
        parser.error("--memory-limit looks like 600MB or 1GB")
    args.sizes = sorted(set(args.sizes))

    print("\n".join(header(args)), flush=True)
    root = Path(tempfile.mkdtemp(prefix="chipq-scale-bench-", dir=args.dir))
    built: dict[int, dict] = {}
    measured: dict[int, dict] = {}
    try:
        for size in args.sizes:
            where = root / label(size)
            where.mkdir()
            built[size] = in_child(
                build, size, str(where), args.events_per_day, args.defects_per_event, args.memory_limit, args.threads
            )
            log(f"{label(size)}: built in {sum(built[size]['timings'].values()):.1f} s; measuring ...")
            measured[size] = in_child(measure, size, str(where), args.cycles, args.memory_limit, args.threads)
            if not args.keep:
                shutil.rmtree(where, ignore_errors=True)
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        raise SystemExit(130) from None
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("\n".join(report(args, built, measured)), flush=True)


if __name__ == "__main__":
    main()
