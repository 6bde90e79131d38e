"""Mart partition rewrites: DELETE + INSERT of one partition in one transaction (idempotent)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import duckdb

from chipq_pipelines.warehouse.schema import load_sql
from chipq_pipelines.warehouse.types import MartResult

DEFAULT_PASS_THRESHOLD = 0.85
PREVIEW_ROWS = 10


_PENDING_MART = {"defect_rates": "defect_rates", "lot_quality": "lot_quality_scores"}


def _rewrite(
    conn: duckdb.DuckDBPyConnection, name: str, delete_params: dict[str, Any], insert_params: dict[str, Any]
) -> None:
    partition = next(iter(delete_params.values()))
    pending = {"mart": _PENDING_MART[name], "partition_key": None if partition is None else str(partition)}
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(load_sql(f"{name}_delete"), delete_params)
        conn.execute(load_sql(f"{name}_insert"), insert_params)
        conn.execute(load_sql("pending_clear"), pending)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _result(conn: duckdb.DuckDBPyConnection, table: str, name: str, params: dict[str, Any]) -> MartResult:
    (row_count,) = conn.execute(load_sql(f"count_{name}"), params).fetchone() or (0,)
    preview = conn.execute(load_sql(f"{name}_preview"), {**params, "limit": PREVIEW_ROWS}).df()
    partition = next(iter(params.values()))
    return MartResult(
        table=table,
        partition=None if partition is None else str(partition),
        row_count=int(row_count),
        preview=preview,
    )


def _check_threshold(pass_threshold: float) -> None:
    if not 0.0 <= pass_threshold <= 1.0:
        raise ValueError(f"pass_threshold {pass_threshold!r} is outside [0, 1]")


def rewrite_defect_rates(conn: duckdb.DuckDBPyConnection, day: dt.date) -> MartResult:
    """Recompute ``marts.defect_rates`` for one UTC day (the daily partition), replacing its rows.

    Counts every non-canary INSPECTION_COMPLETED event whose event_time falls on ``day``.
    Running it twice leaves the same rows (only ``updated_at`` moves).
    """
    params = {"event_date": day}
    _rewrite(conn, "defect_rates", params, params)
    return _result(conn, "marts.defect_rates", "defect_rates", params)


def rewrite_lot_quality(
    conn: duckdb.DuckDBPyConnection, lot_id: str, pass_threshold: float = DEFAULT_PASS_THRESHOLD
) -> MartResult:
    """Recompute the ``marts.lot_quality_scores`` row of one lot (the dynamic partition).

    Uses each inspection's latest non-canary INSPECTION_COMPLETED event. ``pass_rate`` is
    the share of those with ``quality_score >= pass_threshold``; unscored ones count as
    not passed. A lot with no such event ends with no row.
    """
    _check_threshold(pass_threshold)
    params = {"lot_id": lot_id}
    _rewrite(conn, "lot_quality", params, {**params, "pass_threshold": pass_threshold})
    return _result(conn, "marts.lot_quality_scores", "lot_quality", params)


def rewrite_all_marts(
    conn: duckdb.DuckDBPyConnection, pass_threshold: float = DEFAULT_PASS_THRESHOLD
) -> list[MartResult]:
    """Recompute every partition of every mart from raw (full rebuild, one transaction per mart)."""
    _check_threshold(pass_threshold)
    every_day: dict[str, Any] = {"event_date": None}
    every_lot: dict[str, Any] = {"lot_id": None}
    _rewrite(conn, "defect_rates", every_day, every_day)
    _rewrite(conn, "lot_quality", every_lot, {**every_lot, "pass_threshold": pass_threshold})
    return [
        _result(conn, "marts.defect_rates", "defect_rates", every_day),
        _result(conn, "marts.lot_quality_scores", "lot_quality", every_lot),
    ]
