"""The analysts' snapshot: a consistent read-only copy of the warehouse, published atomically.

The writer copies raw, ops and marts into a fresh file next to the target inside one
read transaction, closes it, then ``os.replace``s it onto the snapshot path. A reader
therefore opens either the old or the new file, never a half-written one, and never
touches the writer's file (a read-only open fails while another process writes).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd

from chipq_pipelines.warehouse.schema import connect

SNAPSHOT_SCHEMAS = ("raw", "ops", "marts")


@dataclass(frozen=True)
class PublishedSnapshot:
    """What ``publish_snapshot`` wrote: where, when, and rows per table."""

    path: Path
    published_at: dt.datetime
    size_bytes: int
    table_rows: dict[str, int] = field(default_factory=dict)


def _sql_literal(text: str) -> str:
    # Only for file paths and catalog names chosen by the operator, never data values.
    return "'" + text.replace("'", "''") + "'"


def _sql_identifier(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _remove_quietly(path: Path) -> None:
    for candidate in (path, path.with_name(path.name + ".wal")):
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()


def publish_snapshot(source: duckdb.DuckDBPyConnection | str | Path, snapshot_path: str | Path) -> PublishedSnapshot:
    """Publish a consistent copy of the warehouse to ``snapshot_path``, atomically.

    ``source`` is the writer's open connection (inside the ``duckdb_writer`` slot) or
    the warehouse file's path (opened, used and closed here). Tables, views, primary
    keys and comments are copied with ``COPY FROM DATABASE`` in one transaction; the
    new file is closed, then renamed onto ``snapshot_path``.
    """
    snapshot_path = Path(snapshot_path).resolve()
    snapshot_path.parent.mkdir(parents=True, exist_ok=True)
    staging = snapshot_path.with_name(f".{snapshot_path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    owns_connection = not isinstance(source, duckdb.DuckDBPyConnection)
    conn = source if isinstance(source, duckdb.DuckDBPyConnection) else connect(source)
    alias = f"chipq_snapshot_{uuid.uuid4().hex[:12]}"
    try:
        (catalog,) = conn.execute("SELECT current_database()").fetchone() or ("",)
        conn.execute(f"ATTACH {_sql_literal(str(staging))} AS {alias}")
        try:
            conn.execute("BEGIN TRANSACTION")
            try:
                conn.execute(f"COPY FROM DATABASE {_sql_identifier(catalog)} TO {alias}")
                table_rows = _row_counts(conn, alias)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            conn.execute(f"DETACH {alias}")
        with open(staging, "rb") as staged:
            os.fsync(staged.fileno())
        os.replace(staging, snapshot_path)
    except BaseException:
        _remove_quietly(staging)
        raise
    finally:
        if owns_connection:
            conn.close()
    return PublishedSnapshot(
        path=snapshot_path,
        published_at=dt.datetime.now(dt.UTC),
        size_bytes=snapshot_path.stat().st_size,
        table_rows=table_rows,
    )


def _row_counts(conn: duckdb.DuckDBPyConnection, catalog: str) -> dict[str, int]:
    names = conn.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = ? ORDER BY ALL", [catalog]
    ).fetchall()
    counts = {}
    for schema_name, table_name in names:
        if schema_name in SNAPSHOT_SCHEMAS:
            qualified = ".".join(_sql_identifier(part) for part in (catalog, schema_name, table_name))
            (count,) = conn.execute(f"SELECT count(*) FROM {qualified}").fetchone() or (0,)
            counts[f"{schema_name}.{table_name}"] = int(count)
    return counts


def snapshot_age_seconds(snapshot_path: str | Path) -> float | None:
    """Seconds since the snapshot at ``snapshot_path`` was published, or ``None`` if there is none."""
    try:
        published = Path(snapshot_path).stat().st_mtime
    except FileNotFoundError:
        return None
    return max(0.0, time.time() - published)


def open_snapshot(snapshot_path: str | Path) -> duckdb.DuckDBPyConnection:
    """Open the snapshot read-only, in UTC, with file access disabled (no ATTACH, COPY TO, reads of other files)."""
    path = Path(snapshot_path)
    if not path.is_file():
        raise FileNotFoundError(f"no analyst snapshot at {path} (the pipeline publishes it after landing data)")
    conn = duckdb.connect(str(path), read_only=True, config={"enable_external_access": False})
    conn.execute("SET TimeZone = 'UTC'")
    return conn


def query_snapshot(snapshot_path: str | Path, sql: str) -> pd.DataFrame:
    """Run ``sql`` against the read-only snapshot and return the result (empty frame for statements without one).

    Writes fail: the file is opened read-only and external file access is disabled.
    """
    conn = open_snapshot(snapshot_path)
    try:
        relation = conn.execute(sql)
        if relation.description is None:
            return pd.DataFrame()
        return relation.df()
    finally:
        conn.close()
