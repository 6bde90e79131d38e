"""Analyst snapshot: consistent, atomic, read-only, brought up to date by what changed; result formatting."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from chipq_pipelines.warehouse import (
    LandingResult,
    RejectedRecord,
    connect,
    ensure_schema,
    format_result,
    land_batch,
    publish_snapshot,
    query_snapshot,
    rewrite_all_marts,
    rewrite_days,
    rewrite_lots,
    snapshot_age_seconds,
)
from chipq_pipelines.warehouse.samples import HOSTILE_LOT_IDS, INSPECTION_TOPIC, at, inspection_event
from chipq_pipelines.warehouse.snapshot import INFO_TABLE, INTERNAL, KEPT_COPIES, copies_dir, open_snapshot

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


def land_events(conn: duckdb.DuckDBPyConnection, events: list[dict[str, object]]) -> LandingResult:
    start = (conn.execute("SELECT max(next_offset) FROM ops.ingested_offsets").fetchone()[0]) or 0
    return land_batch(
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


def test_readers_of_one_process_share_the_locked_utc_configuration(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """A long-lived process (metrics server, tests) opens the view many times, also at once."""
    snapshot = tmp_path / "analytics.duckdb"
    publish_snapshot(warehouse, snapshot)
    settings = "SELECT current_setting('TimeZone') AS tz, current_setting('lock_configuration') AS locked"
    first = open_snapshot(snapshot)
    try:
        second = open_snapshot(snapshot)  # the same DuckDB instance: already configured and locked
        assert second.execute(settings).fetchall() == [("UTC", True)]
        second.close()
        assert query_snapshot(snapshot, settings).values.tolist() == [["UTC", True]]
    finally:
        first.close()
    assert query_snapshot(snapshot, settings).values.tolist() == [["UTC", True]]


def test_readers_of_one_process_opening_the_view_at_the_same_moment_all_succeed(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """Threads racing to open a view nobody holds: one configures and locks it, none fails on the lock."""
    snapshot = tmp_path / "analytics.duckdb"
    publish_snapshot(warehouse, snapshot)
    settings = "SELECT current_setting('TimeZone') AS tz, current_setting('lock_configuration') AS locked"
    errors: list[str] = []
    seen: list[list[object]] = []

    def reader(start: threading.Barrier) -> None:
        start.wait()
        try:
            seen.append(query_snapshot(snapshot, settings).values.tolist()[0])
        except duckdb.Error as exc:
            errors.append(repr(exc))

    for _ in range(30):  # each round starts from a closed view: DuckDB drops the instance with its last connection
        start = threading.Barrier(4)
        threads = [threading.Thread(target=reader, args=(start,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert seen == [["UTC", True]] * 120


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


# ------------------------------------------------------------------ incremental publishing


def land_and_rewrite(conn: duckdb.DuckDBPyConnection, events: list[dict[str, object]]) -> None:
    """Land ``events`` and rewrite the mart partitions they touched, as a pipeline cycle does."""
    result = land_events(conn, events)
    rewrite_days(conn, result.touched_event_dates)
    rewrite_lots(conn, result.touched_lot_ids)


def differences(conn: duckdb.DuckDBPyConnection, snapshot: Path) -> dict[str, int]:
    """Rows that differ (both ways) between the warehouse and the snapshot, per table (empty = identical).

    The warehouse's bookkeeping tables must not be in the snapshot at all.
    """
    tables = [
        f"{schema}.{name}"
        for schema, name in conn.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() "
            "WHERE database_name = current_database() AND schema_name IN ('raw', 'ops', 'marts')"
        ).fetchall()
        if f"{schema}.{name}" not in INTERNAL
    ]
    for table in INTERNAL:
        with pytest.raises(duckdb.CatalogException):
            query_snapshot(snapshot, f"SELECT 1 FROM {table}")
    conn.execute(f"ATTACH '{snapshot}' AS snap (READ_ONLY)")
    try:
        out = {}
        for table in tables:
            (n,) = conn.execute(
                f"SELECT (SELECT count(*) FROM (SELECT * FROM {table} EXCEPT ALL SELECT * FROM snap.{table})) "
                f"+ (SELECT count(*) FROM (SELECT * FROM snap.{table} EXCEPT ALL SELECT * FROM {table}))"
            ).fetchall()[0]
            if n:
                out[table] = n
        return out
    finally:
        conn.execute("DETACH snap")


def test_publishes_after_the_first_copy_only_what_changed_and_equal_the_warehouse(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    snapshot = tmp_path / "analytics.duckdb"
    modes = []
    for round_number in range(5):
        # new lots, and a late event re-opening lot 0's day and lot
        events = [inspection_event(batch_id=f"LOT-{round_number}-{i % 3}") for i in range(20)]
        events.append(inspection_event(batch_id="LOT-0-0", quality_score=0.1))
        land_and_rewrite(warehouse, events)
        published = publish_snapshot(warehouse, snapshot)
        modes.append(published.mode)
        assert differences(warehouse, snapshot) == {}, f"round {round_number}"
    # the first publish copies everything; the second clones the current file; then only changes
    assert modes == ["full", "clone", "incremental", "incremental", "incremental"]
    assert len(list(copies_dir(snapshot).glob("copy-*.duckdb"))) == 2
    info = query_snapshot(snapshot, f"SELECT change_seq FROM ops.{INFO_TABLE}")
    assert int(info["change_seq"][0]) == published.change_seq > 0


def test_an_incremental_publish_copies_no_old_rows(warehouse: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    snapshot = tmp_path / "analytics.duckdb"
    land_and_rewrite(warehouse, [inspection_event(batch_id=f"LOT-{i % 40}") for i in range(4000)])
    publish_snapshot(warehouse, snapshot)
    publish_snapshot(warehouse, snapshot)  # both copies exist now
    land_and_rewrite(warehouse, [inspection_event(batch_id="LOT-NEW")])
    # count what the copy about to be updated receives: its raw rows grow by exactly one
    standby = next(p for p in copies_dir(snapshot).glob("copy-*.duckdb") if p.resolve() != snapshot.resolve())
    published = publish_snapshot(warehouse, snapshot)
    assert published.mode == "incremental" and published.copy == standby.resolve()
    assert published.table_rows["raw.inspection_events"] == 4001
    assert differences(warehouse, snapshot) == {}


HOLD_SCRIPT = """
import sys, time, duckdb
conn = duckdb.connect(sys.argv[1], read_only=True)
print(conn.execute("SELECT count(*) FROM raw.inspection_events").fetchall()[0][0], flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_reader_holding_a_copy_neither_blocks_the_writer_nor_sees_it_change(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    snapshot = tmp_path / "analytics.duckdb"
    land_and_rewrite(warehouse, [inspection_event()])
    publish_snapshot(warehouse, snapshot)
    publish_snapshot(warehouse, snapshot)
    held = snapshot.resolve()
    # a long analyst query holds the current copy across several publishes
    reader = subprocess.Popen(
        [sys.executable, "-c", HOLD_SCRIPT, str(snapshot), "6"], stdout=subprocess.PIPE, text=True
    )
    assert reader.stdout is not None and reader.stdout.readline().strip() == "1"
    modes = []
    for _ in range(4):
        land_and_rewrite(warehouse, [inspection_event()])
        modes.append(publish_snapshot(warehouse, snapshot).mode)
        assert differences(warehouse, snapshot) == {}
    # the held copy was never written: the writer used the others, cloning one when both were held
    assert held.exists() and snapshot.resolve() != held
    # 1st: the standby copy; 2nd: the only other copy is held, so the current one is cloned; then a ring of 2 free
    assert modes == ["incremental", "clone", "incremental", "incremental"]
    assert reader.poll() is None, "the reader held its copy throughout"
    reader.wait(timeout=30)
    for _ in range(3):
        publish_snapshot(warehouse, snapshot)
    assert len(list(copies_dir(snapshot).glob("copy-*.duckdb"))) <= KEPT_COPIES


def test_a_rebuilt_warehouse_rebuilds_the_copies_and_leftovers_are_removed(tmp_path: Path) -> None:
    snapshot = tmp_path / "analytics.duckdb"
    for attempt in range(2):
        path = tmp_path / f"warehouse-{attempt}.duckdb"
        with connect(path) as conn:
            ensure_schema(conn)
            land_and_rewrite(conn, [inspection_event() for _ in range(3 + attempt)])
            rewrite_all_marts(conn)
            # a publish killed between making its link and swapping it leaves the link behind
            (tmp_path / f".analytics.duckdb.{os.getpid()}.dead.link").symlink_to("nowhere")
            first = publish_snapshot(conn, snapshot)
            second = publish_snapshot(conn, snapshot)
            assert differences(conn, snapshot) == {}
        assert first.mode == "full"
        assert second.mode == ("clone" if attempt == 0 else "full")  # the other copy belonged to the old warehouse
        assert query_snapshot(snapshot, "SELECT count(*) AS n FROM raw.inspection_events")["n"][0] == 3 + attempt
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_readers_of_a_fresh_link_never_fail(warehouse: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    snapshot = tmp_path / "analytics.duckdb"
    land_and_rewrite(warehouse, [inspection_event()])
    publish_snapshot(warehouse, snapshot)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        land_and_rewrite(warehouse, [inspection_event()])
        publish_snapshot(warehouse, snapshot)
        assert query_snapshot(snapshot, "SELECT count(*) AS n FROM ops.ingested_offsets")["n"][0] == 1
