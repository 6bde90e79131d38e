"""Data-quality and freshness measurements of the marts (no Dagster: plain DuckDB queries)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import duckdb

from chipq_pipelines.warehouse.schema import load_sql

#: Counters of the data-quality queries that must be zero.
LOT_PROBLEMS = (
    "duplicate_event_ids",
    "raw_scores_out_of_range",
    "confidences_out_of_range",
    "null_lot_ids",
    "mart_scores_out_of_range",
    "pass_rates_out_of_range",
)
DAY_PROBLEMS = (
    "duplicate_event_ids",
    "raw_scores_out_of_range",
    "confidences_out_of_range",
    "null_lot_ids",
    "defect_rates_out_of_range",
)


def _one_row(conn: duckdb.DuckDBPyConnection, name: str, params: dict[str, Any]) -> dict[str, Any]:
    relation = conn.execute(load_sql(name), params)
    columns = [d[0] for d in relation.description or []]
    return dict(zip(columns, relation.fetchone() or (), strict=True))


def lot_quality_counts(conn: duckdb.DuckDBPyConnection, lot_id: str | None = None) -> dict[str, int]:
    """Rows checked and problems found behind ``marts.lot_quality_scores`` (one lot or all)."""
    return {k: int(v) for k, v in _one_row(conn, "alerts_check_lot_quality", {"lot_id": lot_id}).items()}


def defect_rate_counts(conn: duckdb.DuckDBPyConnection, day: dt.date | None = None) -> dict[str, int]:
    """Rows checked and problems found behind ``marts.defect_rates`` (one day or all)."""
    return {k: int(v) for k, v in _one_row(conn, "alerts_check_defect_rates", {"event_date": day}).items()}


def mart_quality_problems(conn: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Every non-zero problem counter over both marts (empty when the marts are clean)."""
    lots = lot_quality_counts(conn)
    days = defect_rate_counts(conn)
    problems = {f"lot_quality_scores.{k}": lots[k] for k in LOT_PROBLEMS if lots[k]}
    problems |= {f"defect_rates.{k}": days[k] for k in DAY_PROBLEMS if days[k]}
    return problems


def freshness(
    conn: duckdb.DuckDBPyConnection, mart: str, max_lag_seconds: float, partition: str | None = None
) -> dict[str, Any]:
    """How far a mart is behind the raw rows it summarises (``mart``: ``lots`` or ``days``)."""
    if mart == "lots":
        params: dict[str, Any] = {"lot_id": partition, "max_lag_seconds": max_lag_seconds}
        return _one_row(conn, "alerts_check_lot_freshness", params)
    day = dt.date.fromisoformat(partition) if partition else None
    return _one_row(conn, "alerts_check_day_freshness", {"event_date": day, "max_lag_seconds": max_lag_seconds})
