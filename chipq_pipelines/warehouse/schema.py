"""Opening the warehouse file and creating its schema from ``sql/ddl_*.sql``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib import resources
from pathlib import Path

import duckdb

_SQL_PACKAGE = "chipq_pipelines.warehouse.sql"


@cache
def load_sql(name: str, package: str = _SQL_PACKAGE) -> str:
    """Text of ``<name>.sql`` in ``package`` (default: the warehouse's own ``sql/``; each domain has its own)."""
    return resources.files(package).joinpath(f"{name}.sql").read_text(encoding="utf-8")


def _ddl_names() -> list[str]:
    files = resources.files(_SQL_PACKAGE).iterdir()
    return sorted(f.name.removesuffix(".sql") for f in files if f.name.startswith("ddl_") and f.name.endswith(".sql"))


#: How DuckDB says that another process holds a file (there is no error class of its own).
_LOCK_MARKERS = ("Could not set lock", "Conflicting lock")


def is_lock_error(exc: BaseException) -> bool:
    """Whether ``exc`` is DuckDB refusing a file that another process holds."""
    return any(marker in str(exc) for marker in _LOCK_MARKERS)


def warehouse_id(conn: duckdb.DuckDBPyConnection) -> str | None:
    """The id of the warehouse ``conn`` holds (``ops.warehouse_info``), or None before its schema exists."""
    try:
        rows = conn.execute("SELECT warehouse_id FROM ops.warehouse_info LIMIT 1").fetchall()
    except duckdb.CatalogException:
        return None
    return str(rows[0][0]) if rows else None


def connect(path: str | Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the warehouse at ``path`` (created if missing) with the session in UTC.

    Only one process may write a DuckDB file; in chipq that is the process holding
    the ``duckdb_writer`` pool slot. The schema is not created here: call
    ``ensure_schema`` once after opening a writable connection.
    """
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    conn = duckdb.connect(str(path), read_only=read_only)
    # Dates and timestamps are UTC everywhere in chipq, whatever the machine's zone.
    conn.execute("SET TimeZone = 'UTC'")
    return conn


#: Columns added after the first release: (table, column, type, SQL filling existing rows or None).
_ADDED_COLUMNS = (
    ("raw.inspection_events", "landing_seq", "BIGINT", None),
    ("raw.quality_events", "landing_seq", "BIGINT", None),
    ("raw.defects", "landing_seq", "BIGINT", None),
    ("raw.defects", "event_date", "DATE", "migrate_defect_dates"),
    ("ops.rejected_events", "landing_seq", "BIGINT", None),
    ("ops.alert_outbox", "change_seq", "BIGINT", None),
    ("ops.canaries", "change_seq", "BIGINT", None),
    ("ops.alert_outbox", "event_type", "VARCHAR NOT NULL DEFAULT 'THRESHOLD_VIOLATED'", None),
    ("ops.alert_outbox", "episode", "INTEGER NOT NULL DEFAULT 1", None),
    ("ops.alert_state", "landing_seq", "BIGINT", None),
)


def _migrate(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """Bring a warehouse written by an earlier chipq up to the current columns (once; a no-op after).

    Returns the SQL files to run once the DDL has created the tables added since.
    """
    existing = {
        (f"{schema}.{table}", column)
        for schema, table, column in conn.execute(
            "SELECT schema_name, table_name, column_name FROM duckdb_columns() WHERE database_name = current_database()"
        ).fetchall()
    }
    tables = {table for table, _ in existing}
    for table, column, column_type, backfill in _ADDED_COLUMNS:
        if table in tables and (table, column) not in existing:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {column_type}")  # constants above, no data
            if backfill:
                conn.execute(load_sql(backfill))
    if "raw.inspection_events" in tables and "ops.lot_days" not in tables:
        return ["migrate_lot_days"]
    return []


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """One DuckDB transaction for the block: committed at its end, rolled back on any error."""
    conn.execute("BEGIN TRANSACTION")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def ensure_schema(conn: duckdb.DuckDBPyConnection) -> None:
    """Create the raw, ops and marts schemas, tables, comments and views if missing (idempotent).

    A warehouse written by an earlier version gets the columns added since (and their values) first.
    """
    with transaction(conn):
        after_ddl = _migrate(conn)
        for name in [*_ddl_names(), *after_ddl]:
            conn.execute(load_sql(name))
