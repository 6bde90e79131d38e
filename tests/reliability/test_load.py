"""Load: eight analyst processes on the snapshot during ingest, and a soak with RSS sampled."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import duckdb
import pytest

from chipq_pipelines.paths import REPO_ROOT
from chipq_pipelines.warehouse.snapshot import query_snapshot

pytestmark = pytest.mark.reliability

ANALYSTS = 8
EVENTS_PER_PHASE = 10_000

ANALYST_SCRIPT = """
import json, sys, time
from pathlib import Path
from chipq_pipelines.warehouse.snapshot import query_snapshot
snapshot, stop, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
queries = [
    "SELECT count(*) AS n, count(DISTINCT event_id) AS ids FROM raw.inspection_events",
    "SELECT lot_id, mean_quality_score, pass_rate FROM marts.lot_quality_scores ORDER BY 2 LIMIT 5",
    "SELECT event_date, sum(defect_count) FROM marts.defect_rates GROUP BY 1 ORDER BY 1",
]
done, errors, i = 0, [], 0
print("ready", flush=True)
while not stop.exists():
    try:
        query_snapshot(snapshot, queries[i % len(queries)])
        done += 1
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}"[:300])
    i += 1
out.write_text(json.dumps({"queries": done, "errors": errors}))
"""


def _timed_catch_up(env, rel, events: list[dict]) -> tuple[float, int]:
    rel.publish(env, events)
    started = time.monotonic()
    report = rel.catch_up()
    return time.monotonic() - started, report.events_inserted


@pytest.mark.case("load", "8 analyst processes querying the snapshot in a loop during ingest")
def test_eight_analysts_query_the_snapshot_during_ingest(kafka_bootstrap, make_env, rel, row, sub_rows, tmp_path):
    env = make_env(kafka_bootstrap)
    published: set[str] = set()
    warm = rel.make_events(2000, "WARM")
    rel.publish(env, warm)
    rel.catch_up()  # the snapshot exists from here on
    published |= {e["event_id"] for e in warm}

    baseline_events = rel.make_events(EVENTS_PER_PHASE, "BASE")
    base_s, base_inserted = _timed_catch_up(env, rel, baseline_events)
    published |= {e["event_id"] for e in baseline_events}

    stop = tmp_path / "stop-analysts"
    analysts = []
    for index in range(ANALYSTS):
        out = tmp_path / f"analyst-{index}.json"
        proc = subprocess.Popen(
            [sys.executable, "-c", ANALYST_SCRIPT, str(env.snapshot), str(stop), str(out)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        analysts.append((proc, out))
    for proc, _ in analysts:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.stderr
    loaded_events = rel.make_events(EVENTS_PER_PHASE, "LOADED")
    try:
        loaded_s, loaded_inserted = _timed_catch_up(env, rel, loaded_events)
    finally:
        stop.touch()
        results = []
        for proc, out in analysts:
            proc.wait(timeout=60)
            results.append(json.loads(out.read_text()) if out.exists() else {"queries": 0, "errors": [proc.stderr]})
    published |= {e["event_id"] for e in loaded_events}
    counts = rel.tally(env, published)
    queries = sum(r["queries"] for r in results)
    errors = [e for r in results for e in r["errors"]]
    base_rate, loaded_rate = base_inserted / base_s, loaded_inserted / loaded_s
    drop = 1 - loaded_rate / base_rate
    row.repetitions = ANALYSTS
    row.seconds = base_s + loaded_s
    row.sent = len(published)
    row.landed = counts.landed_ids
    row.rejected = counts.rejected
    row.lost = counts.lost
    row.duplicated = counts.duplicated
    row.note(
        f"{queries:,} analyst queries, {len(errors)} errors; ingest throughput {base_rate:,.0f} events/s alone vs "
        f"{loaded_rate:,.0f} events/s with {ANALYSTS} analysts (drop {drop:.0%}, {EVENTS_PER_PHASE:,} events "
        "each, catch-up wall time incl. marts + snapshot)"
    )

    # The analyst snapshot refuses writes.
    refused = []
    for sql in (
        "CREATE TABLE marts.hack AS SELECT 1",
        "DELETE FROM raw.inspection_events",
        "COPY raw.inspection_events TO '/tmp/chipq-exfil.csv'",
        "ATTACH '/tmp/chipq-other.duckdb' AS other",
    ):
        try:
            query_snapshot(env.snapshot, sql)
            refused.append(f"ACCEPTED: {sql}")
        except duckdb.Error as exc:
            refused.append(type(exc).__name__)
    security = sub_rows("security", "analyst snapshot refuses writes (CREATE, DELETE, COPY TO, ATTACH)")
    security.repetitions = 4
    security.result = "pass" if not any(r.startswith("ACCEPTED") for r in refused) else "**FAIL**"
    security.note(", ".join(refused))
    assert errors == [], errors[:5]
    assert queries > 0
    assert counts.lost == 0 and counts.duplicated == 0
    assert security.result == "pass", refused


@pytest.mark.timeout(int(float(os.environ.get("CHIPQ_SOAK_SECONDS", "20"))) + 600)
@pytest.mark.case("load", "soak: steady stream kept up by `chipq catch-up --follow`, its RSS sampled")
def test_soak_with_rss_sampled(soak, rel, row) -> None:
    """The soak itself runs in the background during the whole suite (``soak`` in conftest); here it ends."""
    assert soak is not None
    result = soak.finish()
    assert result.final_catch_up.returncode == 0, result.final_catch_up.stdout + result.final_catch_up.stderr
    counts = rel.tally(soak.env, result.acked)
    rss = [mb for _, mb in result.samples]
    assert len(rss) >= 4, f"only {len(rss)} RSS samples: the follower died? see {soak.log}"
    quarter = len(rss) // 4
    early = statistics.mean(rss[quarter : 2 * quarter])
    late = statistics.mean(rss[-quarter:])
    growth = late - early
    deciles = ", ".join(f"{rss[round(i * (len(rss) - 1) / 10)]:.0f}" for i in range(11))
    row.repetitions = 1
    row.seconds = result.seconds
    row.sent = len(result.acked)
    row.landed = counts.landed_ids
    row.rejected = counts.rejected
    row.lost = counts.lost
    row.duplicated = counts.duplicated
    row.note(
        f"{result.seconds:.0f} s at {soak.rate} events/s alongside the other cases; follower: "
        f"{result.follower_summary or 'no summary line'} (exit {result.follower_rc}); follower RSS after start-up "
        f"{rss[0]:.0f} MB, 2nd-quarter mean {early:.0f} MB, last-quarter mean {late:.0f} MB, peak {max(rss):.0f} MB "
        f"({len(rss)} samples; by decile: {deciles} MB); the final catch-up landed the tail"
    )
    assert not result.publish_errors, result.publish_errors[:3]
    assert result.follower_rc == 0, f"the follower exited with {result.follower_rc}; see {soak.log}"
    assert counts.lost == 0 and counts.duplicated == 0
    assert growth < 64 + 0.25 * early, f"follower RSS grew {growth:.0f} MB between the 2nd and the last quarter"
