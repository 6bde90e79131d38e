"""Mart partition rewrites, set-based: DELETE + INSERT of many partitions in one transaction (idempotent).

A run that rewrites 500 lots or 30 days does it in one statement each, reading only
the days those partitions have rows on (``ops.lot_days``; zone maps skip the rest of
history), so a rewrite costs what it rewrites, not what the warehouse holds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import duckdb

from chipq_pipelines.warehouse.schema import load_sql, transaction
from chipq_pipelines.warehouse.types import MartResult

DEFAULT_PASS_THRESHOLD = 0.85
PREVIEW_ROWS = 10
DAY_MART = "defect_rates"
LOT_MART = "lot_quality_scores"


def _check_threshold(pass_threshold: float) -> None:
    if not 0.0 <= pass_threshold <= 1.0:
        raise ValueError(f"pass_threshold {pass_threshold!r} is outside [0, 1]")


def _finish(conn: duckdb.DuckDBPyConnection, mart: str, keys: list[str]) -> None:
    ((seq,),) = conn.execute("SELECT nextval('ops.change_seq')").fetchall()
    conn.execute(load_sql("pending_done"), {"mart": mart, "keys": keys})
    conn.execute(load_sql("mart_changes_record"), {"mart": mart, "keys": keys, "change_seq": seq})


def _label(keys: list[str], unit: str) -> str:
    return keys[0] if len(keys) == 1 else f"{len(keys)} {unit}: {keys[0]} … {keys[-1]}"


def rewrite_days(conn: duckdb.DuckDBPyConnection, days: Iterable[dt.date]) -> MartResult:
    """Recompute ``marts.defect_rates`` for the given UTC days, replacing their rows, in one transaction.

    Counts every non-canary INSPECTION_COMPLETED event whose event_time falls on each
    day. Running it twice leaves the same rows (only ``updated_at`` moves).
    """
    day_list = sorted(set(days))
    if not day_list:
        return MartResult(table="marts.defect_rates", partition=None, row_count=0, preview=_empty_preview(conn))
    params = {"days": day_list}
    keys = [d.isoformat() for d in day_list]
    with transaction(conn):
        conn.execute(load_sql("defect_rates_delete"), params)
        conn.execute(load_sql("defect_rates_insert"), params)
        _finish(conn, DAY_MART, keys)
    ((row_count,),) = conn.execute(load_sql("defect_rates_count"), params).fetchall()
    preview = conn.execute(load_sql("defect_rates_preview"), {**params, "limit": PREVIEW_ROWS}).df()
    return MartResult("marts.defect_rates", _label(keys, "days"), int(row_count), preview)


def rewrite_lots(
    conn: duckdb.DuckDBPyConnection, lot_ids: Iterable[str], pass_threshold: float = DEFAULT_PASS_THRESHOLD
) -> MartResult:
    """Recompute the ``marts.lot_quality_scores`` rows of the given lots, in one transaction.

    Uses each inspection's latest non-canary INSPECTION_COMPLETED event. ``pass_rate`` is
    the share of those with ``quality_score >= pass_threshold``; unscored ones count as
    not passed. A lot with no such event ends with no row.
    """
    _check_threshold(pass_threshold)
    keys = sorted(set(lot_ids))
    lots: dict[str, Any] = {"lots": keys}
    with transaction(conn):
        days = [row[0] for row in conn.execute(load_sql("lot_days_of_lots"), lots).fetchall()]
        conn.execute(load_sql("lot_quality_delete"), lots)
        conn.execute(load_sql("lot_quality_insert"), {**lots, "days": days, "pass_threshold": pass_threshold})
        if keys:
            _finish(conn, LOT_MART, keys)
    ((row_count,),) = conn.execute(load_sql("lot_quality_count"), lots).fetchall()
    preview = conn.execute(load_sql("lot_quality_preview"), {**lots, "limit": PREVIEW_ROWS}).df()
    return MartResult("marts.lot_quality_scores", _label(keys, "lots") if keys else None, int(row_count), preview)


def _empty_preview(conn: duckdb.DuckDBPyConnection) -> Any:
    return conn.execute(load_sql("defect_rates_preview"), {"days": [], "limit": 0}).df()


def rewrite_defect_rates(conn: duckdb.DuckDBPyConnection, day: dt.date) -> MartResult:
    """Recompute ``marts.defect_rates`` for one UTC day (the daily partition), replacing its rows."""
    return rewrite_days(conn, [day])


def rewrite_lot_quality(
    conn: duckdb.DuckDBPyConnection, lot_id: str, pass_threshold: float = DEFAULT_PASS_THRESHOLD
) -> MartResult:
    """Recompute the ``marts.lot_quality_scores`` row of one lot (the dynamic partition)."""
    return rewrite_lots(conn, [lot_id], pass_threshold)


def rewrite_all_marts(
    conn: duckdb.DuckDBPyConnection, pass_threshold: float = DEFAULT_PASS_THRESHOLD
) -> list[MartResult]:
    """Recompute every partition of every mart from raw (full rebuild: every day and lot in ``ops.lot_days``)."""
    _check_threshold(pass_threshold)
    lots = [row[0] for row in conn.execute("SELECT DISTINCT lot_id FROM ops.lot_days").fetchall()]
    days = [row[0] for row in conn.execute("SELECT DISTINCT event_date FROM ops.lot_days").fetchall()]
    return [rewrite_days(conn, days), rewrite_lots(conn, lots, pass_threshold)]
