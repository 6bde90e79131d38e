"""Data-quality and freshness measurements of the marts (no Dagster: plain DuckDB queries).

Every measurement covers a bounded ``Scope``, never all of history: the lots or
days a run rewrote or is about to evaluate, or, when none are given, the recent
window (the UTC days from today - ``recent_days`` on, and the lots with rows on
them). Raw rows are read only on the scope's days, passed as a constant list so
that DuckDB's zone maps skip every other day (``ops.lot_days`` says which days a
lot has rows on).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from chipq_pipelines.checks.sql import load as _sql
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
#: The recent window of unpartitioned checks: the UTC days from today minus this many on.
RECENT_DAYS = 2
#: Event times may lie this many days after today (landing accepts them up to a day ahead).
FUTURE_DAYS = 1


@dataclass(frozen=True)
class Scope:
    """What a check covers: lots (for ``lot_quality_scores``) or days, and the raw days read for them."""

    days: tuple[dt.date, ...]
    lot_ids: tuple[str, ...] | None = None
    label: str = ""

    @property
    def day_range(self) -> tuple[dt.datetime, dt.datetime] | None:
        """[first day, last day + 1) as UTC instants, for tables without an event_date column."""
        if not self.days:
            return None
        start = dt.datetime.combine(min(self.days), dt.time(), tzinfo=dt.UTC)
        return start, dt.datetime.combine(max(self.days) + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def recent_window(recent_days: int = RECENT_DAYS, today: dt.date | None = None) -> list[dt.date]:
    """The UTC days of the recent window: today - ``recent_days`` up to tomorrow (event times run a day ahead)."""
    if recent_days < 0:
        raise ValueError(f"recent_days {recent_days!r} must be >= 0")
    today = today or dt.datetime.now(dt.UTC).date()
    first = today - dt.timedelta(days=recent_days)
    return [first + dt.timedelta(days=n) for n in range(recent_days + 1 + FUTURE_DAYS)]


def _span(days: Sequence[dt.date]) -> str:
    return f"{min(days)}..{max(days)}" if days else "no days"


def _column(conn: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> list[Any]:
    return [row[0] for row in conn.execute(sql, params).fetchall()]


def lot_scope(
    conn: duckdb.DuckDBPyConnection, lot_ids: Sequence[str] | None = None, recent_days: int = RECENT_DAYS
) -> Scope:
    """The lots ``lot_ids`` (None: those with rows in the recent window) and every day they have rows on."""
    if lot_ids is None:
        window = recent_window(recent_days)
        lots = _column(conn, _sql("lots_on_days"), {"days": window})
        label = f"lots on {_span(window)} ({len(lots)} lots)"
    else:
        lots = sorted(set(lot_ids))
        label = f"lot {lots[0]!r}" if len(lots) == 1 else f"{len(lots)} lots"
        if len(lots) > 1:
            label += f": {lots[0]!r} … {lots[-1]!r}"
    # the warehouse's own bookkeeping query (the mart rewrites use it too)
    days = _column(conn, load_sql("lot_days_of_lots"), {"lots": lots}) if lots else []
    return Scope(days=tuple(days), lot_ids=tuple(lots), label=label)


def day_scope(days: Sequence[dt.date] | None = None, recent_days: int = RECENT_DAYS) -> Scope:
    """The UTC days ``days`` (None: the recent window)."""
    if days is None:
        window = recent_window(recent_days)
        return Scope(days=tuple(window), label=f"days {_span(window)} (recent window)")
    chosen = sorted(set(days))
    label = f"day {chosen[0]}" if len(chosen) == 1 else f"{len(chosen)} days: {_span(chosen)}"
    return Scope(days=tuple(chosen), label=label)


def _one_row(conn: duckdb.DuckDBPyConnection, name: str, params: dict[str, Any]) -> dict[str, Any]:
    relation = conn.execute(_sql(name), params)
    columns = [d[0] for d in relation.description or []]
    rows = relation.fetchall()
    return dict(zip(columns, rows[0], strict=True))


def check_lot_quality(conn: duckdb.DuckDBPyConnection, scope: Scope) -> dict[str, int]:
    """Rows checked and problems found behind ``marts.lot_quality_scores`` for the scope's lots."""
    start, end = scope.day_range or (None, None)
    params = {"lots": list(scope.lot_ids or ()), "days": list(scope.days), "start": start, "end": end}
    return {k: int(v) for k, v in _one_row(conn, "lot_quality_problems", params).items()}


def check_defect_rates(conn: duckdb.DuckDBPyConnection, scope: Scope) -> dict[str, int]:
    """Rows checked and problems found behind ``marts.defect_rates`` for the scope's days."""
    return {k: int(v) for k, v in _one_row(conn, "defect_rates_problems", {"days": list(scope.days)}).items()}


#: At most this many (partition, problem) rows are named by ``offenders``.
OFFENDERS_LIMIT = 1000


def offenders(conn: duckdb.DuckDBPyConnection, mart: str, scope: Scope) -> list[dict[str, Any]]:
    """The partitions behind a mart's problem counters, named: partition_key, problem, rows, example.

    ``mart`` is ``lots`` (keys are lot ids) or ``days`` (ISO dates); the example is an
    event id (or, for a mart row, the lot or the defect type) to look the problem up by.
    """
    if mart == "lots":
        start, end = scope.day_range or (None, None)
        params = {"lots": list(scope.lot_ids or ()), "days": list(scope.days), "start": start, "end": end}
        name = "lot_quality_offenders"
    elif mart == "days":
        params = {"days": list(scope.days)}
        name = "defect_rates_offenders"
    else:
        raise ValueError(f"mart must be 'lots' or 'days', not {mart!r}")
    relation = conn.execute(_sql(name), {**params, "limit": OFFENDERS_LIMIT})
    columns = [d[0] for d in relation.description or []]
    return [dict(zip(columns, row, strict=True)) for row in relation.fetchall()]


def lot_quality_counts(
    conn: duckdb.DuckDBPyConnection, lot_ids: Sequence[str] | None = None, *, recent_days: int = RECENT_DAYS
) -> dict[str, int]:
    """Rows checked and problems found behind ``marts.lot_quality_scores`` (the lots, or the recent window's)."""
    return check_lot_quality(conn, lot_scope(conn, lot_ids, recent_days))


def defect_rate_counts(
    conn: duckdb.DuckDBPyConnection, days: Sequence[dt.date] | None = None, *, recent_days: int = RECENT_DAYS
) -> dict[str, int]:
    """Rows checked and problems found behind ``marts.defect_rates`` (the days, or the recent window)."""
    return check_defect_rates(conn, day_scope(days, recent_days))


@dataclass(frozen=True)
class MartProblems:
    """What the data-quality queries found behind the lots and days about to be evaluated."""

    #: every non-zero problem counter, e.g. ``lot_quality_scores.duplicate_event_ids``
    counts: dict[str, int]
    #: the offending partitions, named (see ``offenders``)
    lot_offenders: list[dict[str, Any]]
    day_offenders: list[dict[str, Any]]

    def __bool__(self) -> bool:
        return bool(self.counts)

    @property
    def lots(self) -> set[str]:
        return {str(row["partition_key"]) for row in self.lot_offenders}

    @property
    def days(self) -> set[dt.date]:
        return {dt.date.fromisoformat(str(row["partition_key"])) for row in self.day_offenders}


def mart_quality_problems(
    conn: duckdb.DuckDBPyConnection,
    lot_ids: Sequence[str] | None = None,
    days: Sequence[dt.date] | None = None,
    *,
    recent_days: int = RECENT_DAYS,
) -> MartProblems:
    """Every non-zero problem counter over both marts, and the partitions behind them (falsy when clean).

    None stands for the recent window; an empty list checks nothing of that mart. The
    offending partitions are only looked up when a counter is non-zero.
    """
    lot_scope_ = lot_scope(conn, lot_ids, recent_days)
    day_scope_ = day_scope(days, recent_days)
    lots = check_lot_quality(conn, lot_scope_)
    day_counts = check_defect_rates(conn, day_scope_)
    counts = {f"lot_quality_scores.{k}": lots[k] for k in LOT_PROBLEMS if lots[k]}
    day_problems = {f"defect_rates.{k}": day_counts[k] for k in DAY_PROBLEMS if day_counts[k]}
    return MartProblems(
        counts=counts | day_problems,
        lot_offenders=offenders(conn, "lots", lot_scope_) if counts else [],
        day_offenders=offenders(conn, "days", day_scope_) if day_problems else [],
    )


def measure_freshness(
    conn: duckdb.DuckDBPyConnection, mart: str, max_lag_seconds: float, scope: Scope
) -> dict[str, Any]:
    """How far a mart is behind the raw rows it summarises, over the scope (``mart``: ``lots`` or ``days``)."""
    params: dict[str, Any] = {"days": list(scope.days), "max_lag_seconds": max_lag_seconds}
    if mart == "lots":
        return _one_row(conn, "lot_mart_freshness", {**params, "lots": list(scope.lot_ids or ())})
    if mart == "days":
        return _one_row(conn, "day_mart_freshness", params)
    raise ValueError(f"mart must be 'lots' or 'days', not {mart!r}")


def freshness(
    conn: duckdb.DuckDBPyConnection,
    mart: str,
    max_lag_seconds: float,
    partitions: Sequence[str] | None = None,
    *,
    recent_days: int = RECENT_DAYS,
) -> dict[str, Any]:
    """How far a mart is behind its raw rows: ``partitions`` are lot ids (``lots``) or ISO dates (``days``).

    None stands for the recent window.
    """
    if mart == "lots":
        scope = lot_scope(conn, partitions, recent_days)
    else:
        scope = day_scope(None if partitions is None else [dt.date.fromisoformat(p) for p in partitions], recent_days)
    return measure_freshness(conn, mart, max_lag_seconds, scope)
