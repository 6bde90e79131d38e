"""The analysts' view is brought up to date by what changed: same content as a full copy, readers never blocked."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from chipq_pipelines.warehouse import (
    connect,
    ensure_schema,
    land_batch,
    publish_snapshot,
    query_snapshot,
    rewrite_all_marts,
)
from chipq_pipelines.warehouse.marts import rewrite_days, rewrite_lots
from chipq_pipelines.warehouse.samples import INSPECTION_TOPIC, at, inspection_event
from chipq_pipelines.warehouse.snapshot import INFO_TABLE, INTERNAL, KEPT_COPIES, copies_dir


@pytest.fixture
def warehouse(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    connection = connect(tmp_path / "warehouse.duckdb")
    ensure_schema(connection)
    yield connection
    connection.close()


def land_events(conn: duckdb.DuckDBPyConnection, events: list[dict[str, object]]) -> None:
    start = conn.execute("SELECT coalesce(max(next_offset), 0) FROM ops.ingested_offsets").fetchall()[0][0]
    result = land_batch(
        conn,
        topic=INSPECTION_TOPIC,
        offset_ranges={0: (start, start + len(events))},
        inspection_events=[(event, at(0, start + i)) for i, event in enumerate(events)],
    )
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
        land_events(warehouse, events)
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
    land_events(warehouse, [inspection_event(batch_id=f"LOT-{i % 40}") for i in range(4000)])
    publish_snapshot(warehouse, snapshot)
    publish_snapshot(warehouse, snapshot)  # both copies exist now
    land_events(warehouse, [inspection_event(batch_id="LOT-NEW")])
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
    land_events(warehouse, [inspection_event()])
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
        land_events(warehouse, [inspection_event()])
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
            land_events(conn, [inspection_event() for _ in range(3 + attempt)])
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
    land_events(warehouse, [inspection_event()])
    publish_snapshot(warehouse, snapshot)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        land_events(warehouse, [inspection_event()])
        publish_snapshot(warehouse, snapshot)
        assert query_snapshot(snapshot, "SELECT count(*) AS n FROM ops.ingested_offsets")["n"][0] == 1
