"""Opening the warehouse file and creating its schema from ``sql/ddl_*.sql``."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

import duckdb

_SQL_PACKAGE = "chipq_pipelines.warehouse.sql"


@cache
def load_sql(name: str) -> str:
    """Text of ``sql/<name>.sql`` (packaged with the module)."""
    return resources.files(_SQL_PACKAGE).joinpath(f"{name}.sql").read_text(encoding="utf-8")


def _ddl_names() -> list[str]:
    files = resources.files(_SQL_PACKAGE).iterdir()
    return sorted(f.name.removesuffix(".sql") for f in files if f.name.startswith("ddl_") and f.name.endswith(".sql"))


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


def ensure_schema(conn: duckdb.DuckDBPyConnection) -> None:
    """Create the raw, ops and marts schemas, tables, comments and views if missing (idempotent)."""
    conn.execute("BEGIN TRANSACTION")
    try:
        for name in _ddl_names():
            conn.execute(load_sql(name))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
