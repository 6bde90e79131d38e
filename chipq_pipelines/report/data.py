"""What the quality report shows, read from the analyst snapshot.

Every figure comes from the marts and the alert outbox of one snapshot file, so
the report agrees with `chipq sql` and with the alerts that were published.
The control-chart limits are the frozen SPC baseline (``ops.spc_baseline``),
the same centre line and sigma the Western Electric rules used; without one
they are computed here the way the alerts domain would freeze them, and the
chart says so.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from chipq_pipelines.errors import ChipqError
from chipq_pipelines.warehouse.snapshot import open_snapshot


class ReportError(ChipqError, RuntimeError):
    """The report cannot be built (no snapshot yet, or not a chipq warehouse)."""


@dataclass(frozen=True)
class ControlLimits:
    """Centre line and sigma of the lot-mean quality score chart, and where they came from."""

    mean_score: float
    sigma_score: float
    source: str  # what the chart legend says about the limits
    frozen: bool  # True: the stored SPC baseline the alerts used

    def line(self, k: float) -> float:
        return self.mean_score + k * self.sigma_score


@dataclass(frozen=True)
class ReportData:
    snapshot_path: Path
    snapshot_time: dt.datetime
    summary: dict[str, Any]
    pareto: pd.DataFrame  # defect_type, defect_count (descending)
    trends: pd.DataFrame  # event_date, defect_type, defect_rate
    lots: pd.DataFrame  # lot_quality_scores in time order
    limits: ControlLimits | None
    flagged_lots: pd.DataFrame  # lot_id, alert_level, rules, violations
    violations: pd.DataFrame  # scope, alert_level, violations
    has_alerts: bool


def _sql(name: str) -> str:
    return resources.files("chipq_pipelines.report.sql").joinpath(f"{name}.sql").read_text(encoding="utf-8")


def load_report_data(snapshot_path: str | Path) -> ReportData:
    """Read everything the report needs from ``snapshot_path``; ``ReportError`` if it is missing."""
    path = Path(snapshot_path)
    if not path.is_file():
        raise ReportError(
            f"no analyst snapshot at {path}: run `chipq catch-up` (or `make demo` on a fresh machine) to build one"
        )

    # One connection for every query: a snapshot published meanwhile replaces the file, not what we read.
    conn = open_snapshot(path)
    try:

        def read(name: str) -> pd.DataFrame:
            return conn.execute(_sql(name)).df()

        tables = set(read("tables")["qualified_name"])
        needed = {"raw.inspection_events", "ops.rejected_events", "marts.lot_quality_scores", "marts.defect_rates"}
        if missing := sorted(needed - tables):
            raise ReportError(f"{path} is not a chipq analyst snapshot (missing {', '.join(missing)})")
        has_alerts = "ops.alert_outbox" in tables
        lots = read("lot_scores")
        stored = _stored_limits(read("spc_baseline")) if "ops.spc_baseline" in tables else None
        return ReportData(
            snapshot_path=path.resolve(),
            snapshot_time=dt.datetime.fromtimestamp(path.stat().st_mtime, tz=dt.UTC),
            summary=read("summary").iloc[0].to_dict(),
            pareto=read("defect_pareto"),
            trends=read("defect_rate_trends"),
            lots=lots,
            limits=stored or _computed_limits(lots),
            flagged_lots=read("flagged_lots") if has_alerts else _empty("lot_id", "alert_level", "rules", "violations"),
            violations=read("violations") if has_alerts else _empty("scope", "alert_level", "violations"),
            has_alerts=has_alerts,
        )
    finally:
        conn.close()


def _empty(*columns: str) -> pd.DataFrame:
    return pd.DataFrame({column: [] for column in columns})


def _stored_limits(frame: pd.DataFrame) -> ControlLimits | None:
    if frame.empty:
        return None
    row = frame.iloc[0]
    origin = "rules file" if row["source"] == "configured" else f"{int(row['lot_count'])} in-control lots"
    return ControlLimits(
        mean_score=float(row["mean_score"]),
        sigma_score=float(row["sigma_score"]),
        source=f"frozen SPC baseline {int(row['baseline_id'])} ({origin})",
        frozen=True,
    )


def _computed_limits(lots: pd.DataFrame) -> ControlLimits | None:
    """Limits when no baseline was frozen: as the alerts domain would freeze them, else from every lot."""
    from chipq_pipelines.rules import LotPoint, freeze_baseline, load_rules
    from chipq_pipelines.rules.evaluate import lot_in_control

    records = lots.to_dict("records")
    scores = [float(s) for s in lots["mean_quality_score"] if s is not None and not math.isnan(s)]
    if not scores:
        return None
    rules = load_rules()
    by_id = {str(r["lot_id"]): r for r in records}
    points = [LotPoint.from_row(r) for r in records]
    baseline = freeze_baseline(points, rules.spc, lambda p: lot_in_control(rules, by_id[p.lot_id]))
    if baseline is not None:
        origin = (
            "the rules file's baseline"
            if baseline.source == "configured"
            else f"computed from the data: {len(baseline.lot_ids)} in-control lots"
        )
        return ControlLimits(
            baseline.values.mean_score, baseline.values.sigma_score, f"{origin} (no frozen baseline)", frozen=False
        )
    # Too few lots to freeze: the lots that pass every fixed lot rule, so excursions do not widen sigma.
    in_control = [p.mean_score for p in points if p.mean_score is not None and lot_in_control(rules, by_id[p.lot_id])]
    used, which = (in_control, "in-control") if len(in_control) > 1 else (scores, "scored")
    sigma = statistics.stdev(used) if len(used) > 1 else 0.0
    return ControlLimits(
        statistics.fmean(used),
        max(sigma, rules.spc.min_sigma),
        f"computed from the data: {len(used)} {which} lots (too few for an SPC baseline)",
        frozen=False,
    )
