"""Offset gaps: records deleted from Kafka before they landed, listed and acknowledged.

Ingest records every such range in ``ops.offset_gaps`` (in the landing transaction
that skips it), and ``kafka_offsets_reconciled`` fails while one is unacknowledged:
records that never reached the warehouse are a loss someone must look at (replay
them from the source system, or accept them). Listing reads the analysts' view;
acknowledging writes the warehouse, so it waits for the writer's file like a run.
"""

from __future__ import annotations

import datetime as dt
import getpass
import time
from pathlib import Path

import duckdb
import pandas as pd

from chipq_pipelines.checks.sql import load as _sql
from chipq_pipelines.errors import ChipqError
from chipq_pipelines.warehouse.schema import connect, ensure_schema, is_lock_error, transaction
from chipq_pipelines.warehouse.snapshot import open_snapshot, publish_snapshot

GAP_COLUMNS = [
    "topic", "partition", "first_offset", "last_offset", "records", "detected_at",
    "acknowledged_at", "acknowledged_by", "note",
]  # fmt: skip


class GapAcknowledgementError(ChipqError, RuntimeError):
    """No such gap, or the warehouse stayed busy."""


def list_gaps(snapshot_path: str | Path, *, include_acknowledged: bool = False) -> pd.DataFrame:
    """The gaps in the analysts' view (unacknowledged ones only, unless asked), oldest first."""
    conn = open_snapshot(snapshot_path)
    try:
        exists = conn.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'ops' AND table_name = 'offset_gaps'"
        ).fetchone()
        if not exists or not exists[0]:
            return pd.DataFrame(columns=GAP_COLUMNS)
        return conn.execute(_sql("offset_gaps_list"), {"all": include_acknowledged}).df()
    finally:
        conn.close()


def _open_writer(warehouse_path: Path, timeout_s: float) -> duckdb.DuckDBPyConnection:
    """The warehouse opened for writing, waiting while a pipeline step holds it."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return connect(warehouse_path)
        except duckdb.IOException as exc:
            if not is_lock_error(exc) or time.monotonic() > deadline:
                raise GapAcknowledgementError(
                    f"the warehouse {warehouse_path} stayed busy for {timeout_s:.0f} s (a pipeline run holds it); "
                    "try again, or with a longer --timeout"
                ) from exc
            time.sleep(0.05)


def acknowledge_gaps(
    warehouse_path: str | Path,
    snapshot_path: str | Path | None,
    *,
    topic: str,
    partition: int,
    first_offset: int | None,
    note: str,
    by: str | None = None,
    timeout_s: float = 60.0,
) -> list[tuple[int, int]]:
    """Acknowledge the unacknowledged gaps of one partition (all, or the one starting at ``first_offset``).

    Returns the (first, last) offsets acknowledged, and republishes the analysts' view
    when ``snapshot_path`` is given, so ``chipq gaps`` shows it at once.
    """
    warehouse_path = Path(warehouse_path)
    if not warehouse_path.exists():
        raise GapAcknowledgementError(f"no warehouse at {warehouse_path}")
    if not note.strip():
        raise GapAcknowledgementError("say why with --note (what was lost, and what was done about it)")
    conn = _open_writer(warehouse_path, timeout_s)
    try:
        ensure_schema(conn)
        params = {
            "topic": topic,
            "partition": partition,
            "first_offset": first_offset,
            "by": by or getpass.getuser(),
            "note": note,
            "at": dt.datetime.now(dt.UTC),
        }
        with transaction(conn):
            acknowledged = conn.execute(_sql("offset_gaps_acknowledge"), params).fetchall()
        if not acknowledged:
            which = f" starting at offset {first_offset}" if first_offset is not None else ""
            raise GapAcknowledgementError(f"no unacknowledged gap on {topic}[{partition}]{which}: see `chipq gaps`")
        if snapshot_path is not None:
            publish_snapshot(conn, snapshot_path)
        return sorted((int(first), int(last)) for first, last in acknowledged)
    finally:
        conn.close()


def format_gaps(frame: pd.DataFrame) -> str:
    """A terminal table of ``list_gaps`` (or a sentence when there are none)."""
    if frame.empty:
        return "No offset gaps: every offset read from Kafka landed (or was rejected with its bytes)."
    shown = frame.assign(detected_at=frame["detected_at"].map(lambda t: t.strftime("%Y-%m-%d %H:%M:%S")))
    return shown.fillna("").to_string(index=False)
