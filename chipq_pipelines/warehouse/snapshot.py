"""The analysts' view: consistent read-only copies of the warehouse, brought up to date by what changed.

The snapshot path (``$CHIPQ_HOME/analytics.duckdb``) is a symbolic link to one of a few
DuckDB files in ``<snapshot>.d/``. Publishing never touches the file the link points to:

1. It picks another copy that no reader holds. DuckDB's own file lock tells: a
   read-write ``ATTACH`` fails at once while any process has the file open. A copy
   that was current one or two publishes ago is normally free; if every copy is held
   (long analyst queries), the current file is cloned into a new copy instead, so a
   reader never blocks the writer.
2. It brings that copy up to date in ONE transaction with only what changed since
   the copy's own watermark (``ops.snapshot_info.change_seq``): raw rows and rejects
   with a higher ``landing_seq`` (zone maps skip older row groups), the mart
   partitions rewritten since (``ops.mart_changes``), outbox rows and canaries changed
   since, and the small operational tables whole. Its cost follows the change, not
   history. The warehouse's bookkeeping (``ops.lot_days``, ``ops.mart_changes``) is
   not part of the view.
3. It checkpoints and detaches the copy, then swaps the link atomically
   (``os.replace`` of a new link). A reader opens the old file or the new one, never
   a half-written one, and keeps the file it opened until it closes it.

A copy made for another warehouse (rebuilt from Kafka) or for another schema version
is rebuilt whole, once. Hand-written because DuckDB has no incremental ``COPY FROM
DATABASE``; everything else (the copy, the lock, the transaction) is DuckDB's own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd

from chipq_pipelines.warehouse.reader_limits import ReaderLimits
from chipq_pipelines.warehouse.schema import connect, ensure_schema, is_lock_error, transaction
from chipq_pipelines.warehouse.schema import warehouse_id as schema_warehouse_id

SNAPSHOT_SCHEMAS = ("raw", "ops", "marts")
#: Copies kept beside the current one when nobody holds them (more appear only while readers hold them).
KEPT_COPIES = 3
#: Append-only tables: rows newer than the copy's watermark are added.
APPENDED = {
    "raw.inspection_events": "landing_seq",
    "raw.defects": "landing_seq",
    "raw.quality_events": "landing_seq",
    "ops.rejected_events": "landing_seq",
    "ops.canaries": "change_seq",
}
#: Mart tables: partitions rewritten since the watermark are replaced (mart name, key column, key type).
MARTS = {
    "marts.defect_rates": ("defect_rates", "event_date", "DATE"),
    "marts.lot_quality_scores": ("lot_quality_scores", "lot_id", "VARCHAR"),
}
#: The warehouse's own bookkeeping (one row per lot or lot-day): not part of the analysts' view.
INTERNAL = ("ops.lot_days", "ops.mart_changes")
#: Mutable tables numbered by ``change_seq``: rows changed since the watermark are replaced (key column).
CHANGED_ROWS = {"ops.alert_outbox": "event_id"}
INFO_TABLE = "snapshot_info"
#: readers of this process configure a newly opened view one at a time (open_snapshot)
_CONFIGURING = threading.Lock()


@dataclass(frozen=True)
class PublishedSnapshot:
    """What ``publish_snapshot`` did: the link, the copy it points to, how, and rows per table."""

    path: Path
    published_at: dt.datetime
    size_bytes: int
    table_rows: dict[str, int] = field(default_factory=dict)
    copy: Path | None = None
    mode: str = "incremental"  # incremental, clone (every copy held by readers) or full (new/rebuilt copy)
    change_seq: int = 0
    seconds: float = 0.0


def _sql_literal(text: str) -> str:
    # Only for file paths and catalog names chosen by the operator, never data values.
    return "'" + text.replace("'", "''") + "'"


def _sql_identifier(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _qualified(catalog: str, table: str) -> str:
    schema, name = table.split(".")
    return ".".join(_sql_identifier(part) for part in (catalog, schema, name))


def copies_dir(snapshot_path: Path) -> Path:
    """Where the copies behind the snapshot link live: ``<snapshot>.d/``."""
    return snapshot_path.with_name(snapshot_path.name + ".d")


def _current_copy(snapshot_path: Path) -> Path | None:
    if not snapshot_path.is_symlink():
        return None
    target = Path(os.readlink(snapshot_path))
    return (snapshot_path.parent / target).resolve() if not target.is_absolute() else target


def _clean_leftovers(snapshot_path: Path, directory: Path) -> None:
    """Links and WAL files a killed publish left behind (the copies themselves are reused)."""
    for pattern in (
        f".{snapshot_path.name}.*.link",
        f".{snapshot_path.name}.*.tmp",
        f".{snapshot_path.name}.*.tmp.wal",
    ):
        for leftover in snapshot_path.parent.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    if not directory.is_dir():
        return
    for wal in directory.glob("*.duckdb.wal"):
        # A copy's WAL only outlives a publish that was killed before its checkpoint; DuckDB
        # replays it when the copy is attached next, so it stays. Stray WALs without a copy go.
        if not wal.with_suffix("").exists():
            with contextlib.suppress(FileNotFoundError):
                wal.unlink()


def _fingerprint(conn: duckdb.DuckDBPyConnection, catalog: str) -> str:
    """Tables, columns, types, views and comments of the warehouse: a copy made under others is rebuilt."""
    rows = conn.execute(
        """
        SELECT 'c', schema_name, table_name, column_name, data_type, coalesce(comment, '')
        FROM duckdb_columns() WHERE database_name = $catalog AND schema_name IN ('raw', 'ops', 'marts')
        UNION ALL
        SELECT 't', schema_name, table_name, '', '', coalesce(comment, '')
        FROM duckdb_tables() WHERE database_name = $catalog AND schema_name IN ('raw', 'ops', 'marts')
        UNION ALL
        SELECT 'v', schema_name, view_name, '', sql, coalesce(comment, '')
        FROM duckdb_views() WHERE database_name = $catalog AND schema_name IN ('raw', 'ops', 'marts')
        ORDER BY ALL
        """,
        {"catalog": catalog},
    ).fetchall()
    return hashlib.sha256(repr(rows).encode()).hexdigest()[:16]


def _warehouse_tables(conn: duckdb.DuckDBPyConnection, catalog: str) -> list[str]:
    rows = conn.execute(
        "SELECT schema_name || '.' || table_name FROM duckdb_tables() "
        "WHERE database_name = ? AND schema_name IN ('raw', 'ops', 'marts') ORDER BY 1",
        [catalog],
    ).fetchall()
    return [name for (name,) in rows]


def _change_seq(conn: duckdb.DuckDBPyConnection) -> int:
    rows = conn.execute(
        "SELECT coalesce(last_value, 0) FROM duckdb_sequences() "
        "WHERE database_name = current_database() AND schema_name = 'ops' AND sequence_name = 'change_seq'"
    ).fetchall()
    return int(rows[0][0]) if rows else 0


def _copy_info(conn: duckdb.DuckDBPyConnection, alias: str) -> tuple[str, str, int] | None:
    """(warehouse_id, fingerprint, change_seq) recorded in an attached copy, or None for an empty/foreign file."""
    has_info = conn.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'ops' AND table_name = ?",
        [alias, INFO_TABLE],
    ).fetchall()[0][0]
    if not has_info:
        return None
    rows = conn.execute(
        f"SELECT warehouse_id, schema_fingerprint, change_seq FROM {_qualified(alias, 'ops.' + INFO_TABLE)}"
    ).fetchall()
    return (str(rows[0][0]), str(rows[0][1]), int(rows[0][2])) if rows else None


def _attach(conn: duckdb.DuckDBPyConnection, path: Path, alias: str) -> bool:
    """Attach ``path`` read-write; False when a reader holds it (DuckDB's lock)."""
    try:
        conn.execute(f"ATTACH {_sql_literal(str(path))} AS {alias}")
    except duckdb.Error as exc:
        if is_lock_error(exc):
            return False
        raise
    return True


def _drop_copy_objects(conn: duckdb.DuckDBPyConnection, alias: str) -> None:
    """Empty an attached copy (views, tables, sequences, schemas) so that it can be filled whole."""
    for schema in SNAPSHOT_SCHEMAS:
        conn.execute(f"DROP SCHEMA IF EXISTS {alias}.{_sql_identifier(schema)} CASCADE")


def _fill_whole(conn: duckdb.DuckDBPyConnection, catalog: str, alias: str) -> None:
    _drop_copy_objects(conn, alias)
    conn.execute(f"COPY FROM DATABASE {_sql_identifier(catalog)} TO {alias}")
    for table in INTERNAL:
        conn.execute(f"DROP TABLE IF EXISTS {_qualified(alias, table)}")


def _bring_up_to_date(conn: duckdb.DuckDBPyConnection, catalog: str, alias: str, since: int) -> None:
    """Apply the changes numbered above ``since`` from the warehouse to the attached copy (inside a transaction)."""
    params = {"since": since}
    for table in _warehouse_tables(conn, catalog):
        source, target = _qualified(catalog, table), _qualified(alias, table)
        if table in INTERNAL:
            continue
        if table in APPENDED:
            seq = APPENDED[table]
            conn.execute(f"INSERT INTO {target} BY NAME SELECT * FROM {source} WHERE {seq} > $since", params)
        elif table in MARTS:
            mart, key, key_type = MARTS[table]
            changed = (
                f"SELECT CAST(partition_key AS {key_type}) FROM {_qualified(catalog, 'ops.mart_changes')} "
                f"WHERE mart = '{mart}' AND change_seq > $since"
            )
            conn.execute(f"DELETE FROM {target} WHERE {key} IN ({changed})", params)
            conn.execute(f"INSERT INTO {target} BY NAME SELECT * FROM {source} WHERE {key} IN ({changed})", params)
        elif table in CHANGED_ROWS:
            key = CHANGED_ROWS[table]
            changed = f"SELECT {key} FROM {source} WHERE change_seq > $since"
            conn.execute(f"DELETE FROM {target} WHERE {key} IN ({changed})", params)
            conn.execute(f"INSERT INTO {target} BY NAME SELECT * FROM {source} WHERE change_seq > $since", params)
        else:  # small operational tables: whole
            conn.execute(f"DELETE FROM {target}")
            conn.execute(f"INSERT INTO {target} BY NAME SELECT * FROM {source}")


def _record_info(
    conn: duckdb.DuckDBPyConnection, alias: str, warehouse_id: str, fingerprint: str, change_seq: int
) -> None:
    info = _qualified(alias, "ops." + INFO_TABLE)
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {info} (warehouse_id VARCHAR, schema_fingerprint VARCHAR, "
        "change_seq BIGINT, published_at TIMESTAMPTZ)"
    )
    conn.execute(
        f"COMMENT ON TABLE {info} IS 'When this copy of the warehouse was published and up to which change "
        "(ops.change_seq) it holds.'"
    )
    conn.execute(f"DELETE FROM {info}")
    conn.execute(
        f"INSERT INTO {info} VALUES ($warehouse_id, $fingerprint, $change_seq, now())",
        {"warehouse_id": warehouse_id, "fingerprint": fingerprint, "change_seq": change_seq},
    )


def _candidates(directory: Path, current: Path | None) -> list[Path]:
    """Copies other than the current one, most recently written first (the least to catch up)."""
    copies = [p for p in directory.glob("copy-*.duckdb") if current is None or p.resolve() != current]
    return sorted(copies, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def _new_copy_path(directory: Path) -> Path:
    numbers = [int(p.stem.removeprefix("copy-")) for p in directory.glob("copy-*.duckdb") if p.stem[5:].isdigit()]
    return directory / f"copy-{max(numbers, default=0) + 1}.duckdb"


def _swap_link(snapshot_path: Path, copy: Path) -> None:
    link = snapshot_path.with_name(f".{snapshot_path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.link")
    link.symlink_to(os.path.relpath(copy, snapshot_path.parent))
    try:
        os.replace(link, snapshot_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        raise
    directory = os.open(snapshot_path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _prune(conn: duckdb.DuckDBPyConnection, directory: Path, keep: set[Path]) -> None:
    """Remove surplus copies nobody holds (oldest first) beyond ``KEPT_COPIES``."""
    copies = sorted(directory.glob("copy-*.duckdb"), key=lambda p: p.stat().st_mtime_ns)
    surplus = len(copies) - KEPT_COPIES
    for copy in copies:
        if surplus <= 0:
            return
        if copy.resolve() in keep:
            continue
        alias = f"chipq_prune_{uuid.uuid4().hex[:8]}"
        if not _attach(conn, copy, alias):
            continue  # a reader still has it: next time
        conn.execute(f"DETACH {alias}")
        for path in (copy, copy.with_name(copy.name + ".wal")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        surplus -= 1


def publish_snapshot(source: duckdb.DuckDBPyConnection | str | Path, snapshot_path: str | Path) -> PublishedSnapshot:
    """Publish the analysts' view at ``snapshot_path``: a copy brought up to date, then an atomic link swap.

    ``source`` is the writer's open connection (inside the ``duckdb_writer`` slot, schema
    ensured) or the warehouse file's path (opened, schema ensured, used and closed here).
    """
    started = time.monotonic()
    snapshot_path = Path(os.path.abspath(snapshot_path))
    directory = copies_dir(snapshot_path)
    directory.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(snapshot_path, directory)
    owns_connection = not isinstance(source, duckdb.DuckDBPyConnection)
    conn = source if isinstance(source, duckdb.DuckDBPyConnection) else connect(source)
    if owns_connection:
        ensure_schema(conn)  # a warehouse written by an earlier chipq gains its change numbers first
    alias = f"chipq_snapshot_{uuid.uuid4().hex[:12]}"
    try:
        ((catalog,),) = conn.execute("SELECT current_database()").fetchall()
        current = _current_copy(snapshot_path)
        copy = next((c for c in _candidates(directory, current) if _attach(conn, c, alias)), None)
        mode = "incremental"
        if copy is None:
            copy = _new_copy_path(directory)
            if current is not None and current.exists():
                # Every other copy is held by a reader: start from the current file (a plain
                # file copy, nobody writes it) rather than rebuild history through SQL.
                shutil.copyfile(current, copy)
                mode = "clone"
            if not _attach(conn, copy, alias):
                raise RuntimeError(f"{copy} is locked by another process although chipq just created it")
        try:
            with transaction(conn):
                warehouse_id = schema_warehouse_id(conn) or ""
                fingerprint = _fingerprint(conn, catalog)
                change_seq = _change_seq(conn)
                recorded = _copy_info(conn, alias)
                if recorded is None or recorded[:2] != (warehouse_id, fingerprint) or recorded[2] > change_seq:
                    _fill_whole(conn, catalog, alias)
                    mode = "full"
                else:
                    _bring_up_to_date(conn, catalog, alias, recorded[2])
                _record_info(conn, alias, warehouse_id, fingerprint, change_seq)
                table_rows = _row_counts(conn, alias)
            conn.execute(f"CHECKPOINT {alias}")
        finally:
            conn.execute(f"DETACH {alias}")
        _swap_link(snapshot_path, copy)
        _prune(conn, directory, {copy.resolve(), *([current] if current else [])})
    finally:
        if owns_connection:
            conn.close()
    return PublishedSnapshot(
        path=snapshot_path,
        published_at=dt.datetime.now(dt.UTC),
        size_bytes=copy.stat().st_size,
        table_rows=table_rows,
        copy=copy,
        mode=mode,
        change_seq=change_seq,
        seconds=time.monotonic() - started,
    )


def _row_counts(conn: duckdb.DuckDBPyConnection, catalog: str) -> dict[str, int]:
    names = conn.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = ? ORDER BY ALL", [catalog]
    ).fetchall()
    counts = {}
    for schema_name, table_name in names:
        if schema_name in SNAPSHOT_SCHEMAS and table_name != INFO_TABLE:
            ((count,),) = conn.execute(
                f"SELECT count(*) FROM {_qualified(catalog, f'{schema_name}.{table_name}')}"
            ).fetchall()
            counts[f"{schema_name}.{table_name}"] = int(count)
    return counts


def snapshot_age_seconds(snapshot_path: str | Path) -> float | None:
    """Seconds since the snapshot at ``snapshot_path`` was published, or ``None`` if there is none."""
    try:
        published = Path(snapshot_path).stat().st_mtime
    except FileNotFoundError:
        return None
    return max(0.0, time.time() - published)


def open_snapshot(
    snapshot_path: str | Path, *, attempts: int = 5, limits: ReaderLimits | None = None
) -> duckdb.DuckDBPyConnection:
    """Open the snapshot read-only, in UTC, with file access disabled (no ATTACH, COPY TO, reads of other files).

    Memory and spilling are capped by ``limits`` (default ``ReaderLimits.from_env()``), and the
    configuration is then locked so that a query cannot raise the caps again.
    A reader that resolved the link just before a swap could meet the writer on a copy
    it is bringing up to date; it then retries on the fresh link (a few milliseconds).
    """
    path = Path(snapshot_path)
    limits = limits or ReaderLimits.from_env()
    for attempt in range(attempts):
        if not path.is_file():
            raise FileNotFoundError(f"no analyst snapshot at {path} (the pipeline publishes it after landing data)")
        config = {"enable_external_access": False, **limits.duckdb_config(path)}
        try:
            conn = duckdb.connect(str(path), read_only=True, config=config)
        except duckdb.Error as exc:
            if not is_lock_error(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.02 * (attempt + 1))
            continue
        # DuckDB shares one database instance between the connections of a process to one file: a
        # second reader finds the (global) settings already made and locked by the first (DuckDB tells
        # only by refusing). Readers opening it at the same moment take turns.
        with _CONFIGURING:
            try:
                conn.execute("SET GLOBAL TimeZone = 'UTC'")
                conn.execute("SET lock_configuration = true")
            except duckdb.InvalidInputException as exc:
                if "configuration has been locked" not in str(exc):
                    raise
        return conn
    raise AssertionError("unreachable")


def query_snapshot(snapshot_path: str | Path, sql: str, *, limits: ReaderLimits | None = None) -> pd.DataFrame:
    """Run ``sql`` against the read-only snapshot and return the result (empty frame for statements without one).

    Writes fail: the file is opened read-only and external file access is disabled.
    """
    conn = open_snapshot(snapshot_path, limits=limits)
    try:
        relation = conn.execute(sql)
        if relation.description is None:
            return pd.DataFrame()
        return relation.df()
    finally:
        conn.close()
