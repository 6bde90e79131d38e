"""What analysts see in their terminal: `chipq sql` and `chipq alerts` on a published snapshot."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from chipq_pipelines.warehouse import connect, ensure_schema, format_result, publish_snapshot, rewrite_all_marts
from chipq_pipelines.warehouse.landing import land_batch
from chipq_pipelines.warehouse.samples import INSPECTION_TOPIC, at, inspection_event

ESCAPING_LOT = "LOT-\x1b[31mRED\x1b[0m"
LOTS = ["LOT-A", "LOT-B", ESCAPING_LOT]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A CHIPQ_HOME with a published snapshot: three lots (one holding ANSI escapes) and an alert on it."""
    home = tmp_path / "home"
    home.mkdir()
    warehouse = connect(home / "warehouse.duckdb")
    ensure_schema(warehouse)
    events = [inspection_event(batch_id=lot) for lot in ("LOT-A", "LOT-B", "LOT-ESC")]
    land_batch(
        warehouse,
        topic=INSPECTION_TOPIC,
        offset_ranges={0: (0, len(events))},
        inspection_events=[(event, at(0, i)) for i, event in enumerate(events)],
    )
    # Landing rejects control characters in ids now; a warehouse landed before that (or a mart column
    # built from other text) may still hold them, and the terminal must never receive them raw.
    for table, column in (("raw.inspection_events", "batch_id"), ("ops.lot_days", "lot_id")):
        warehouse.execute(f"UPDATE {table} SET {column} = ? WHERE {column} = 'LOT-ESC'", [ESCAPING_LOT])
    rewrite_all_marts(warehouse)
    warehouse.execute(
        "INSERT INTO ops.alert_outbox (event_id, rule, rules_version, scope, lot_id, alert_level, threshold, "
        "observed_value, message, detected_at) VALUES ('e1', 'lot_mean_score', '1', 'LOT', ?, 'CRITICAL', 0.8, "
        "0.5, 'mean score 0.5 < 0.8', ?)",
        [ESCAPING_LOT, dt.datetime(2025, 3, 10, 9, tzinfo=dt.UTC)],
    )
    publish_snapshot(warehouse, home / "analytics.duckdb")
    warehouse.close()
    return home


def chipq(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "CHIPQ_HOME": str(home), **env}
    for name in ("CHIPQ_SQL_MEMORY_LIMIT", "CHIPQ_SQL_TEMP_LIMIT", "CHIPQ_ANALYST_SNAPSHOT"):
        if name not in env:
            environ.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-m", "chipq_pipelines.cli", *args], capture_output=True, text=True, env=environ, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result


def test_sql_csv_ends_with_one_newline(home: Path) -> None:
    out = chipq(
        home,
        "sql",
        "SELECT lot_id FROM marts.lot_quality_scores WHERE lot_id IN ('LOT-A', 'LOT-B') ORDER BY 1",
        "--format",
        "csv",
    )
    assert out.stdout == "lot_id\nLOT-A\nLOT-B\n"


def test_sql_table_shows_escapes_instead_of_sending_them(home: Path) -> None:
    out = chipq(home, "sql", "SELECT lot_id FROM marts.lot_quality_scores ORDER BY 1").stdout
    assert "\x1b" not in out
    assert "LOT-\\x1b[31mRED\\x1b[0m" in out
    # into a file (not a terminal), csv and json stay exact: they are the data
    csv = chipq(home, "sql", "SELECT lot_id FROM marts.lot_quality_scores ORDER BY 1", "--format", "csv").stdout
    assert ESCAPING_LOT in csv.splitlines()
    json_out = chipq(home, "sql", "SELECT lot_id FROM marts.lot_quality_scores ORDER BY 1", "--format", "json").stdout
    assert [row["lot_id"] for row in json.loads(json_out)] == sorted(LOTS)
    # csv printed on a terminal is escaped like a table
    frame = pd.DataFrame({"lot_id": [ESCAPING_LOT], "n": [1]})
    assert format_result(frame, "csv", terminal=True) == "lot_id,n\nLOT-\\x1b[31mRED\\x1b[0m,1"


def test_alerts_table_shows_escapes_instead_of_sending_them(home: Path) -> None:
    out = chipq(home, "alerts").stdout
    assert "\x1b" not in out
    assert "LOT-\\x1b[31mRED\\x1b[0m" in out and "CRITICAL" in out


def test_sql_spills_under_chipq_home_within_caps(home: Path) -> None:
    settings = (
        "SELECT current_setting('temp_directory') AS temp_directory, "
        "current_setting('max_temp_directory_size') AS temp_cap, current_setting('memory_limit') AS memory"
    )
    temp_dir, temp_cap, memory = chipq(home, "sql", settings, "--format", "csv").stdout.splitlines()[1].split(",")
    assert Path(temp_dir).parent == home / "tmp", "spill files go under $CHIPQ_HOME/tmp, not next to the snapshot"
    assert temp_cap == "3.7 GiB"  # the 4GB default
    assert memory.endswith("GiB") or memory.endswith("MiB")

    flags = chipq(home, "sql", settings, "--format", "csv", "--memory-limit", "512MB", "--temp-limit", "1GB")
    assert flags.stdout.splitlines()[1].split(",")[1:] == ["953.6 MiB", "488.2 MiB"]
    env = chipq(home, "sql", settings, "--format", "csv", CHIPQ_SQL_MEMORY_LIMIT="256MB", CHIPQ_SQL_TEMP_LIMIT="2GB")
    assert env.stdout.splitlines()[1].split(",")[1:] == ["1.8 GiB", "244.1 MiB"]


def test_a_query_cannot_raise_the_caps(home: Path) -> None:
    environ = {**os.environ, "CHIPQ_HOME": str(home)}
    result = subprocess.run(
        [sys.executable, "-m", "chipq_pipelines.cli", "sql", "SET max_temp_directory_size = '1TB'"],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
    )
    assert result.returncode != 0
    assert "locked" in result.stderr


def test_report_shows_escapes_in_its_tables(home: Path, tmp_path: Path) -> None:
    from chipq_pipelines.report import build_report

    html = build_report(home / "analytics.duckdb", tmp_path / "report.html").read_text(encoding="utf-8")
    assert "\x1b" not in html
    assert "LOT-\\x1b[31mRED\\x1b[0m" in html
