"""Analyst snapshot: consistent, atomic, read-only; result formatting."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from chipq_pipelines.warehouse import (
    RejectedRecord,
    connect,
    ensure_schema,
    format_result,
    land_batch,
    publish_snapshot,
    query_snapshot,
    rewrite_all_marts,
    snapshot_age_seconds,
)
from chipq_pipelines.warehouse.samples import HOSTILE_LOT_IDS, INSPECTION_TOPIC, at, inspection_event

# Every landed offset is one row, so in a consistent snapshot these two numbers agree.
CONSISTENCY_SQL = (
    "SELECT (SELECT count(*) FROM raw.inspection_events) AS landed_rows, "
    "(SELECT coalesce(sum(next_offset), 0) FROM ops.ingested_offsets) AS landed_offsets"
)


@pytest.fixture
def warehouse(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    connection = connect(tmp_path / "warehouse.duckdb")
    ensure_schema(connection)
    yield connection
    connection.close()


def land_events(conn: duckdb.DuckDBPyConnection, events: list[dict[str, object]]) -> None:
    start = (conn.execute("SELECT max(next_offset) FROM ops.ingested_offsets").fetchone()[0]) or 0
    land_batch(
        conn,
        topic=INSPECTION_TOPIC,
        offset_ranges={0: (start, start + len(events))},
        inspection_events=[(event, at(0, start + i)) for i, event in enumerate(events)],
    )


def test_snapshot_is_a_consistent_read_only_copy_with_comments(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    land_events(warehouse, [inspection_event(batch_id=lot_id) for lot_id in HOSTILE_LOT_IDS])
    land_batch(
        warehouse,
        topic=INSPECTION_TOPIC,
        offset_ranges={1: (0, 1)},
        rejected=[RejectedRecord(INSPECTION_TOPIC, 1, 0, None, b"\x00\xff", "SerializationError")],
    )
    rewrite_all_marts(warehouse)
    snapshot_path = tmp_path / "snapshots" / "analytics.duckdb"
    assert snapshot_age_seconds(snapshot_path) is None

    published = publish_snapshot(warehouse, snapshot_path)

    assert published.path == snapshot_path
    assert snapshot_path.is_symlink() and snapshot_path.resolve() == published.copy
    assert published.mode == "full"
    assert published.table_rows["raw.inspection_events"] == len(HOSTILE_LOT_IDS)
    assert published.table_rows["marts.lot_quality_scores"] == len(HOSTILE_LOT_IDS)
    assert published.table_rows["ops.rejected_events"] == 1
    # the link and the folder of copies, no staging left
    assert sorted(p.name for p in snapshot_path.parent.iterdir()) == ["analytics.duckdb", "analytics.duckdb.d"]
    assert 0 <= snapshot_age_seconds(snapshot_path) < 60
    lots = query_snapshot(snapshot_path, "SELECT lot_id FROM marts.lot_quality_scores ORDER BY lot_id")
    assert lots["lot_id"].tolist() == sorted(HOSTILE_LOT_IDS)
    raw = query_snapshot(snapshot_path, 'SELECT raw FROM ops.rejected_events WHERE "offset" = 0')
    assert bytes(raw["raw"].iloc[0]) == b"\x00\xff"
    comment = query_snapshot(
        snapshot_path,
        "SELECT comment FROM duckdb_columns() WHERE table_name = 'defect_rates' AND column_name = 'defect_rate'",
    )
    assert comment["comment"].tolist() == ["chips_with_defect / chips_inspected."]
    assert query_snapshot(snapshot_path, "SELECT * FROM marts.daily_inspections")["chips_inspected"].sum() > 0

    # the writer keeps writing; the snapshot only changes on the next publish
    land_events(warehouse, [inspection_event()])
    assert query_snapshot(snapshot_path, CONSISTENCY_SQL).iloc[0].tolist() == [6, 7]
    publish_snapshot(warehouse, snapshot_path)
    assert query_snapshot(snapshot_path, CONSISTENCY_SQL).iloc[0].tolist() == [7, 8]


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO marts.lot_quality_scores (lot_id) VALUES ('x')",
        "DELETE FROM raw.inspection_events",
        "DROP TABLE raw.defects",
        "CREATE TABLE marts.mine AS SELECT 1",
        "ATTACH 'elsewhere.duckdb' AS other",
        "COPY raw.inspection_events TO 'leak.csv'",
    ],
)
def test_snapshot_refuses_writes(warehouse: duckdb.DuckDBPyConnection, tmp_path: Path, statement: str) -> None:
    land_events(warehouse, [inspection_event()])
    snapshot_path = tmp_path / "analytics.duckdb"
    publish_snapshot(warehouse, snapshot_path)
    with pytest.raises(duckdb.Error):
        query_snapshot(snapshot_path, statement)
    assert query_snapshot(snapshot_path, "SELECT count(*) AS n FROM raw.inspection_events")["n"].tolist() == [1]


def test_publish_from_a_path_and_missing_snapshot(tmp_path: Path) -> None:
    warehouse_path = tmp_path / "warehouse.duckdb"
    with connect(warehouse_path) as conn:
        ensure_schema(conn)
        land_events(conn, [inspection_event(), inspection_event()])
    publish_snapshot(warehouse_path, tmp_path / "analytics.duckdb")
    assert query_snapshot(tmp_path / "analytics.duckdb", CONSISTENCY_SQL).iloc[0].tolist() == [2, 2]
    with pytest.raises(FileNotFoundError, match="no analyst snapshot"):
        query_snapshot(tmp_path / "nothing.duckdb", "SELECT 1")


# Runs in separate reader processes (as analysts' `chipq sql` would): read until the deadline, report as JSON.
READER_SCRIPT = """
import json, sys, time
from chipq_pipelines.warehouse import query_snapshot
snapshot_path, seconds, sql = sys.argv[1], float(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + seconds
reads, errors, inconsistent = 0, [], 0
while time.monotonic() < deadline:
    try:
        rows, offsets = query_snapshot(snapshot_path, sql).iloc[0].tolist()
        inconsistent += int(rows != offsets)
        reads += 1
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
print(json.dumps({"reads": reads, "errors": errors[:5], "inconsistent": inconsistent}))
"""


def test_readers_see_no_errors_while_snapshots_are_published(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    snapshot_path = tmp_path / "analytics.duckdb"
    land_events(warehouse, [inspection_event()])
    publish_snapshot(warehouse, snapshot_path)
    reading_seconds = 6.0
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", READER_SCRIPT, str(snapshot_path), str(reading_seconds), CONSISTENCY_SQL],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    time.sleep(1.5)  # let the readers start (imports) before publishing
    publishes = 0
    deadline = time.monotonic() + reading_seconds - 2
    while time.monotonic() < deadline:
        land_events(warehouse, [inspection_event() for _ in range(50)])
        publish_snapshot(warehouse, snapshot_path)
        publishes += 1
    results = [json.loads(reader.communicate(timeout=60)[0]) for reader in readers]
    assert publishes >= 5
    assert all(result["reads"] > 0 for result in results), results
    assert [result["errors"] for result in results] == [[], [], []]
    assert [result["inconsistent"] for result in results] == [0, 0, 0]
    assert query_snapshot(snapshot_path, CONSISTENCY_SQL).iloc[0].tolist() == [1 + 50 * publishes] * 2


def test_format_result_renders_tables_csv_and_json() -> None:
    df = pd.DataFrame(
        {
            "lot_id": ["LOT-O'Brien", "pipe|lot", None],
            "pass_rate": [0.5, float("nan"), 1.0],
            "event_time": pd.to_datetime(["2025-03-10T08:00:00Z", "2025-03-11T00:00:00Z", None]),
            "metadata": [{"line": "fab-1"}, {}, None],
        }
    )
    table = format_result(df, "table").splitlines()
    assert table[0].split("|")[1].strip() == "lot_id"
    assert set(table[1]) <= {"|", "-", ":"}
    assert "pipe\\|lot" in table[3]
    assert len({len(line) for line in table}) == 1  # aligned
    assert table[4].count("NULL") == 3

    rows = list(csv.reader(io.StringIO(format_result(df, "csv"))))
    assert rows[0] == ["lot_id", "pass_rate", "event_time", "metadata"]
    assert rows[1][:2] == ["LOT-O'Brien", "0.5"]

    records = json.loads(format_result(df, "json"))
    assert records[0] == {
        "lot_id": "LOT-O'Brien",
        "pass_rate": 0.5,
        "event_time": "2025-03-10T08:00:00+00:00",
        "metadata": {"line": "fab-1"},
    }
    assert records[1]["pass_rate"] is None
    assert records[2] == {"lot_id": None, "pass_rate": 1.0, "event_time": None, "metadata": None}
    with pytest.raises(ValueError, match="unknown format"):
        format_result(df, "xml")  # type: ignore[arg-type]


def test_format_result_of_snapshot_types(warehouse: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    land_events(warehouse, [inspection_event(event_time=dt.datetime(2025, 3, 10, 8, tzinfo=dt.UTC))])
    publish_snapshot(warehouse, tmp_path / "analytics.duckdb")
    df = query_snapshot(
        tmp_path / "analytics.duckdb",
        "SELECT event_time, event_date, metadata, quality_score FROM raw.inspection_events",
    )
    assert json.loads(format_result(df, "json")) == [
        {
            "event_time": "2025-03-10T08:00:00+00:00",
            "event_date": "2025-03-10T00:00:00",
            "metadata": {"line": "fab-1"},
            "quality_score": 0.9,
        }
    ]
    assert "2025-03-10T08:00:00+00:00" in format_result(df, "table")
