"""`chipq report`: a self-contained HTML page from a simulated line with excursions, end to end."""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

import duckdb
import pytest

from chipq_pipelines.definitions import build_defs
from chipq_pipelines.report import ReportError, build_report
from chipq_pipelines.runner import catch_up
from chipq_pipelines.simulate import Simulation, generate, publish_simulation
from chipq_pipelines.simulate.publish import default_start
from chipq_pipelines.warehouse import connect, ensure_schema, publish_snapshot, query_snapshot

pytestmark = pytest.mark.e2e

# 40 lots of 100 inspections: enough in-control lots to freeze the SPC baseline (20),
# and the simulator's automatic excursions (a drifting station, a particle and a scratch lot).
EVENTS, LOTS, SEED = 8_000, 40, 11

IMAGE = re.compile(r'<img\b[^>]*\balt="([^"]+)"[^>]*\bsrc="data:image/png;base64,([A-Za-z0-9+/=]+)"')
EXTERNAL = re.compile(
    r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//|@import""", re.I
)


def simulate_and_catch_up(pipeline_env, events: int, lots: int, seed: int) -> Simulation:
    """Publish a simulated line to the test's topics and run the pipeline until it has no work left."""
    sim = generate(events, seed=seed, lots=lots, start=default_start(events, lots))
    publish_simulation(sim, pipeline_env.kafka_config, topic=pipeline_env.inspection_topic, progress=False)
    catch_up(defs=build_defs(), echo=lambda _line: None)
    assert pipeline_env.snapshot.exists(), "catch-up must publish the analyst snapshot"
    return sim


def flagged_table(html: str) -> str:
    match = re.search(r'<table id="flagged-lots">.*?</table>', html, re.S)
    assert match, "the report must have a flagged-lots table"
    return match.group(0)


def test_report_is_self_contained_with_three_charts_and_the_flagged_lots(pipeline_env, tmp_path: Path) -> None:
    sim = simulate_and_catch_up(pipeline_env, EVENTS, LOTS, SEED)
    assert sim.truth.excursions, "the simulation must inject excursions"

    out = build_report(pipeline_env.snapshot, tmp_path / "out" / "report.html")
    html = out.read_text(encoding="utf-8")

    # self-contained: no external host referenced, no scripts or stylesheets to fetch
    assert not EXTERNAL.findall(html), EXTERNAL.findall(html)
    assert "<script" not in html and "<link" not in html

    images = IMAGE.findall(html)
    assert [alt.split(":")[0].split(" ")[0] for alt, _ in images] == ["Defect", "Daily", "Control"], images
    for alt, data in images:
        png = base64.b64decode(data)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000, f"{alt}: not a drawn chart"

    # the summary agrees with the snapshot
    lots_scored = int(query_snapshot(pipeline_env.snapshot, "SELECT count(*) FROM marts.lot_quality_scores").iloc[0, 0])
    assert lots_scored == LOTS
    assert re.search(rf"<th>lots scored</th><td[^>]*>{LOTS}</td>", html)

    # every lot with a LOT-scope violation is named, and only those
    outbox = query_snapshot(
        pipeline_env.snapshot, "SELECT DISTINCT lot_id FROM ops.alert_outbox WHERE scope = 'LOT' ORDER BY lot_id"
    )
    flagged = set(outbox["lot_id"])
    table = flagged_table(html)
    named = set(re.findall(r"LOT-[0-9A-F]{4}-\d{5}", table))
    assert flagged and named == flagged
    excursion_lots = set(sim.truth.excursion_lots())
    assert excursion_lots & named, f"no injected excursion lot among the flagged: {sorted(named)}"
    assert f'<th>lots flagged</th><td class="num">{len(flagged)}</td>' in html

    # the control chart uses the frozen SPC baseline the alerts used
    baseline = query_snapshot(pipeline_env.snapshot, "SELECT mean_score, sigma_score FROM ops.spc_baseline")
    assert len(baseline) == 1, "40 lots with 30 clean ones must freeze an SPC baseline"
    mean, sigma = baseline.iloc[0]
    assert f"centre {mean:.4f}, σ {sigma:.4f} — frozen SPC baseline" in html

    # without a frozen baseline the limits are computed from the data, and the page says so
    unfrozen = tmp_path / "unfrozen.duckdb"
    shutil.copyfile(pipeline_env.snapshot, unfrozen)
    with duckdb.connect(str(unfrozen)) as conn:
        conn.execute("DELETE FROM ops.spc_baseline")
    html = build_report(unfrozen, tmp_path / "unfrozen.html").read_text(encoding="utf-8")
    assert "computed from the data" in html and "frozen SPC baseline" not in html
    assert len(IMAGE.findall(html)) == 3


def test_report_on_an_empty_warehouse_still_has_its_three_charts(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    with connect(warehouse) as conn:
        ensure_schema(conn)
        publish_snapshot(conn, tmp_path / "analytics.duckdb")
    html = build_report(tmp_path / "analytics.duckdb", tmp_path / "report.html").read_text(encoding="utf-8")
    assert len(IMAGE.findall(html)) == 3
    assert "No lot has a violation." in html


def test_report_without_a_snapshot_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"no analyst snapshot at .*chipq catch-up.*make demo"):
        build_report(tmp_path / "missing.duckdb", tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()
