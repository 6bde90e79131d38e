"""Statistical process control on lots: Western Electric rules, u-chart and p-chart.

Limits come from a frozen baseline of in-control lots, never from the lots
being judged. Only degradation is flagged: lot-mean scores on the low side,
defects per chip and failing fractions on the high side.

- Lot mean quality score, an individuals chart in time order (first_event_time):
  WE1 one point below mu - 3 sigma; WE2 2 of 3 below mu - 2 sigma; WE3 4 of 5
  below mu - sigma; WE4 8 in a row below mu. A rule fires on the lot that
  completes the pattern (which must itself lie in the zone).
- Defects per chip, u-chart: u = defects / chips, UCL = u_bar + 3 sqrt(u_bar / n), n = chips.
- Failing fraction, p-chart: p = 1 - pass_rate, UCL = p_bar + 3 sqrt(p_bar (1 - p_bar) / n),
  n = completed inspections.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chipq_pipelines.rules.evaluate import Violation
from chipq_pipelines.rules.loader import SpcBaselineValues, SpcSettings

WE1, WE2, WE3, WE4 = (
    "spc_we1_beyond_3sigma",
    "spc_we2_2of3_beyond_2sigma",
    "spc_we3_4of5_beyond_1sigma",
    "spc_we4_8_in_a_row",
)
U_CHART = "spc_u_chart_defects_per_chip"
P_CHART = "spc_p_chart_failing_fraction"
#: How many earlier lots a Western Electric rule looks back: a changed lot re-judges this many after it.
LOOKBACK = 7


@dataclass(frozen=True)
class LotPoint:
    """One lot as SPC sees it."""

    lot_id: str
    first_event_time: dt.datetime
    mean_score: float | None
    defect_count: int
    chips: int
    inspections: int
    pass_rate: float

    @property
    def u(self) -> float | None:
        return self.defect_count / self.chips if self.chips else None

    @property
    def p(self) -> float | None:
        return 1.0 - self.pass_rate if self.inspections else None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> LotPoint:
        score = row.get("mean_quality_score")
        score = None if score is None or (isinstance(score, float) and math.isnan(score)) else float(score)
        return cls(
            lot_id=str(row["lot_id"]),
            first_event_time=row["first_event_time"],
            mean_score=score,
            defect_count=int(row["defect_count"]),
            chips=int(row["chips_inspected"]),
            inspections=int(row["inspections_completed"]),
            pass_rate=float(row["pass_rate"]),
        )


@dataclass(frozen=True)
class Baseline:
    """Frozen centre lines and the lots they came from (empty when configured in the rules file)."""

    values: SpcBaselineValues
    lot_ids: tuple[str, ...] = ()
    removed_lot_ids: tuple[str, ...] = ()
    source: str = "computed"

    def u_limit(self, chips: int) -> float:
        return self.values.u_bar + 3.0 * math.sqrt(self.values.u_bar / chips)

    def p_limit(self, inspections: int) -> float:
        p_bar = self.values.p_bar
        return p_bar + 3.0 * math.sqrt(p_bar * (1.0 - p_bar) / inspections)


def time_order(points: Iterable[LotPoint]) -> list[LotPoint]:
    return sorted(points, key=lambda p: (p.first_event_time, p.lot_id))


def freeze_baseline(
    points: Sequence[LotPoint], settings: SpcSettings, in_control: Callable[[LotPoint], bool] = lambda p: True
) -> Baseline | None:
    """Centre lines from the earliest in-control lots, or None while there are too few.

    Takes the first ``baseline_lots`` lots (time order) that pass ``in_control``
    and have a score, then repeatedly removes special causes (a lot-mean outside
    mu +- 3 sigma, a u or p outside its 3-sigma limits) and recomputes. When fewer
    than ``min_baseline_lots`` remain, the window grows by the shortfall.
    """
    if settings.baseline is not None:
        return Baseline(settings.baseline, source="configured")
    candidates = [p for p in time_order(points) if p.mean_score is not None and p.chips and in_control(p)]
    window = settings.baseline_lots
    while window <= len(candidates):
        kept, removed = _remove_special_causes(candidates[:window], settings.min_sigma)
        if len(kept) >= settings.min_baseline_lots:
            return Baseline(
                _centre_lines(kept, settings.min_sigma),
                lot_ids=tuple(p.lot_id for p in kept),
                removed_lot_ids=tuple(p.lot_id for p in removed),
            )
        window += settings.min_baseline_lots - len(kept)
    return None


def _centre_lines(points: Sequence[LotPoint], min_sigma: float) -> SpcBaselineValues:
    scores = [p.mean_score for p in points if p.mean_score is not None]
    sigma = statistics.stdev(scores) if len(scores) > 1 else 0.0
    chips = sum(p.chips for p in points)
    inspections = sum(p.inspections for p in points)
    failing = sum((p.p or 0.0) * p.inspections for p in points)
    return SpcBaselineValues(
        mean_score=statistics.fmean(scores),
        sigma_score=max(sigma, min_sigma),
        u_bar=sum(p.defect_count for p in points) / chips if chips else 0.0,
        p_bar=failing / inspections if inspections else 0.0,
    )


def _special_cause(point: LotPoint, centre: SpcBaselineValues) -> bool:
    """Outside the 3-sigma limits (either side) of the lot-mean, u- or p-chart."""
    assert point.mean_score is not None
    u_bar, p_bar = centre.u_bar, centre.p_bar
    u_sd = 3.0 * math.sqrt(u_bar / point.chips)
    p_sd = 3.0 * math.sqrt(p_bar * (1.0 - p_bar) / point.inspections) if point.inspections else 0.0
    return (
        abs(point.mean_score - centre.mean_score) > 3.0 * centre.sigma_score
        or (point.u is not None and u_bar > 0 and abs(point.u - u_bar) > u_sd)
        or (point.p is not None and 0 < p_bar < 1 and abs(point.p - p_bar) > p_sd)
    )


def _remove_special_causes(points: list[LotPoint], min_sigma: float) -> tuple[list[LotPoint], list[LotPoint]]:
    kept, removed = list(points), []
    while len(kept) > 1:
        centre = _centre_lines(kept, min_sigma)
        out = [p for p in kept if _special_cause(p, centre)]
        if not out:
            break
        removed += out
        kept = [p for p in kept if not _special_cause(p, centre)]
    return kept, removed


def evaluate_spc(
    points: Sequence[LotPoint],
    baseline: Baseline,
    settings: SpcSettings,
    rules_version: str,
    judge: set[str] | None = None,
) -> list[Violation]:
    """SPC violations of the lots in ``judge`` (all when None), each against the whole time-ordered series."""
    ordered = time_order(points)
    enabled = set(settings.rules)
    mu, sigma = baseline.values.mean_score, baseline.values.sigma_score
    scored = [p for p in ordered if p.mean_score is not None]
    out: list[Violation] = []

    def violation(rule: str, point: LotPoint, observed: float, limit: float, message: str) -> Violation:
        return Violation(
            rule=rule,
            scope="LOT",
            alert_level=settings.level,
            threshold=limit,
            observed_value=observed,
            rules_version=rules_version,
            message=message,
            lot_id=point.lot_id,
        )

    zones = ((WE2, 2.0, 3, 2), (WE3, 1.0, 5, 4), (WE4, 0.0, 8, 8))
    for index, point in enumerate(scored):
        if judge is not None and point.lot_id not in judge:
            continue
        score = point.mean_score
        assert score is not None
        if WE1 in enabled and score < mu - 3.0 * sigma:
            limit = mu - 3.0 * sigma
            out.append(violation(WE1, point, score, limit, f"lot mean score {score:g} below mu - 3 sigma = {limit:g}"))
        for rule, k, window, needed in zones:
            limit = mu - k * sigma
            if rule not in enabled or index + 1 < window or not score < limit:
                continue
            below = sum(1 for p in scored[index + 1 - window : index + 1] if p.mean_score < limit)  # type: ignore[operator]
            if below >= needed:
                what = f"{needed} of {window}" if needed < window else f"{window} in a row"
                zone = f"mu - {k:g} sigma" if k else "mu"
                out.append(
                    violation(
                        rule,
                        point,
                        score,
                        limit,
                        f"{what} lot mean scores below {zone} = {limit:g}; this lot {score:g}",
                    )
                )
    for point in ordered:
        if judge is not None and point.lot_id not in judge:
            continue
        if U_CHART in enabled and point.u is not None and baseline.values.u_bar > 0:
            limit = baseline.u_limit(point.chips)
            if point.u > limit:
                message = (
                    f"defects per chip {point.u:g} above UCL {limit:g} "
                    f"(u_bar {baseline.values.u_bar:g}, n={point.chips})"
                )
                out.append(violation(U_CHART, point, point.u, limit, message))
        if P_CHART in enabled and point.p is not None and point.inspections and 0 < baseline.values.p_bar < 1:
            limit = baseline.p_limit(point.inspections)
            if point.p > limit:
                message = (
                    f"failing fraction {point.p:g} above UCL {limit:g} (p_bar {baseline.values.p_bar:g}, "
                    f"n={point.inspections})"
                )
                out.append(violation(P_CHART, point, point.p, limit, message))
    return out


def lots_to_rejudge(points: Sequence[LotPoint], changed: set[str]) -> set[str]:
    """The changed lots plus the ``LOOKBACK`` scored lots after each (their windows include it)."""
    scored = [p.lot_id for p in time_order(points) if p.mean_score is not None]
    judge = set(changed)
    for index, lot_id in enumerate(scored):
        if lot_id in changed:
            judge.update(scored[index + 1 : index + 1 + LOOKBACK])
    return judge
