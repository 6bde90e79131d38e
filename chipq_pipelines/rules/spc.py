"""Statistical process control on lots: Western Electric rules, u-chart and p-chart.

Limits come from a frozen baseline of in-control lots, never from the lots
being judged. Only degradation is flagged: lot-mean scores on the low side,
defects per chip and failing fractions on the high side.

- Lot mean quality score, an individuals chart in time order (first_event_time):
  WE1 one point below mu - 3 sigma; WE2 2 of 3 below mu - 2 sigma; WE3 4 of 5
  below mu - sigma; WE4 8 in a row below mu - m sigma (m = ``we4_margin_sigma``,
  0.5 shipped, 0 = textbook). A rule fires on the lot that completes the pattern
  (which must itself lie in the zone).
- Defects per chip, u-chart, and failing fraction, p-chart, with Laney's
  over-dispersion factor and probability (exact-tail) limits instead of the
  normal approximation: the UCL is the smallest count c with
  P(X > c) <= 0.00135 (the one-sided tail of 3 sigma), where X is the lot's count
  under the baseline: defects ~ Poisson(u_bar n), widened to a negative binomial
  of variance sigma_z^2 u_bar n when sigma_z > 1 (n = chips); failing
  inspections ~ Binomial(n, p_bar), widened to a beta-binomial of variance
  sigma_z^2 n p_bar (1 - p_bar) when sigma_z > 1 (n = inspections). sigma_z is
  Laney's: the moving range of the baseline lots' z-scores
  z = (x - n c) / sqrt(n c) (u) or (x - n p_bar) / sqrt(n p_bar (1 - p_bar)) (p),
  MR_bar / 1.128, floored at 1. The limit reported is c / n.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import itertools
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
#: One-sided tail probability of the u- and p-chart limits: that of a normal beyond 3 sigma.
TAIL = 0.00135
#: d2 for moving ranges of 2: sigma = MR_bar / 1.128.
D2 = 1.128


# ------------------------------------------------------------ count models


def _nb_log_pmf(k: int, mean: float, phi: float) -> float:
    """Negative binomial with the given mean and variance phi * mean (phi > 1)."""
    r = mean / (phi - 1.0)
    q = 1.0 / phi  # success probability: r (1 - q) / q = mean
    return math.lgamma(k + r) - math.lgamma(r) - math.lgamma(k + 1) + r * math.log(q) + k * math.log1p(-q)


def _poisson_log_pmf(k: int, mean: float) -> float:
    return k * math.log(mean) - mean - math.lgamma(k + 1)


def _binomial_log_pmf(k: int, n: int, p: float) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p) + (n - k) * math.log1p(-p)


def _beta_binomial_log_pmf(k: int, n: int, p: float, phi: float) -> float:
    """Beta-binomial with mean n p and variance phi n p (1 - p) (1 < phi < n)."""
    rho = (phi - 1.0) / (n - 1)  # intra-lot correlation: variance = n p (1 - p) (1 + (n - 1) rho)
    a, b = p * (1.0 / rho - 1.0), (1.0 - p) * (1.0 / rho - 1.0)

    def log_beta(x: float, y: float) -> float:
        return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)

    return (
        math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + log_beta(k + a, n - k + b) - log_beta(a, b)
    )


@functools.lru_cache(maxsize=4096)
def _count_cdf(kind: str, n: int, rate: float, sigma_z: float) -> tuple[float, ...]:
    """P(X <= k) for k = 0, 1, ... until 1 - TAIL / 10 is passed (or k = n for the binomial kinds)."""
    phi = sigma_z * sigma_z
    if kind == "defects":
        mean = rate * n

        def log_pmf(k: int) -> float:
            return _nb_log_pmf(k, mean, phi) if phi > 1.0 else _poisson_log_pmf(k, mean)

        top = None
    else:
        binomial = phi <= 1.0 or n < 2 or phi >= n

        def log_pmf(k: int) -> float:
            return _binomial_log_pmf(k, n, rate) if binomial else _beta_binomial_log_pmf(k, n, rate, phi)

        top = n
    cdf, total, k = [], 0.0, 0
    while (top is None or k <= top) and total < 1.0 - TAIL / 10:
        total += math.exp(log_pmf(k))
        cdf.append(min(total, 1.0))
        k += 1
    return tuple(cdf)


def upper_limit_count(kind: str, n: int, rate: float, sigma_z: float = 1.0) -> int:
    """The UCL count: the smallest c with P(X > c) <= TAIL under the baseline (``kind`` defects or failing)."""
    if rate <= 0.0 or (kind == "failing" and rate >= 1.0):
        return 0 if kind == "defects" else n
    cdf = _count_cdf(kind, n, rate, max(1.0, sigma_z))
    for c, below in enumerate(cdf):
        if below >= 1.0 - TAIL:
            return c
    return len(cdf) - 1 if kind == "failing" else len(cdf)


def lower_tail(kind: str, n: int, rate: float, sigma_z: float, count: int) -> float:
    """P(X <= count) under the baseline (for removing unusually good lots from the baseline)."""
    if rate <= 0.0 or (kind == "failing" and rate >= 1.0):
        return 1.0
    cdf = _count_cdf(kind, n, rate, max(1.0, sigma_z))
    return cdf[count] if count < len(cdf) else 1.0


def _z(kind: str, count: int, n: int, rate: float) -> float:
    spread = n * rate if kind == "defects" else n * rate * (1.0 - rate)
    return (count - n * rate) / math.sqrt(spread)


def laney_sigma_z(kind: str, counts: Sequence[tuple[int, int]], rate: float) -> float:
    """Laney's sigma_z of (count, n) pairs in time order: MR_bar / 1.128 of their z-scores, floored at 1.

    Under a plain Poisson (binomial) the z-scores have sd 1; lot-to-lot variation
    beyond it (clustered defects) makes sigma_z > 1 and widens the limits by that factor.
    """
    if rate <= 0.0 or (kind == "failing" and rate >= 1.0):
        return 1.0
    z = [_z(kind, count, n, rate) for count, n in counts if n]
    if len(z) < 2:
        return 1.0
    moving_range = statistics.fmean(abs(b - a) for a, b in itertools.pairwise(z))
    return max(1.0, moving_range / D2)


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

    @property
    def failing(self) -> int:
        """Inspections that did not pass (pass_rate is a share of whole inspections)."""
        return round((1.0 - self.pass_rate) * self.inspections)

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

    @property
    def u_sigma_z(self) -> float:
        return self.values.u_sigma_z or 1.0

    @property
    def p_sigma_z(self) -> float:
        return self.values.p_sigma_z or 1.0

    def u_limit_count(self, chips: int) -> int:
        """Most defects a lot of ``chips`` chips may have in control."""
        return upper_limit_count("defects", chips, self.values.u_bar, self.u_sigma_z)

    def u_limit(self, chips: int) -> float:
        """UCL of defects per chip for a lot of ``chips`` chips."""
        return self.u_limit_count(chips) / chips

    def p_limit_count(self, inspections: int) -> int:
        """Most failing inspections a lot of ``inspections`` may have in control."""
        return upper_limit_count("failing", inspections, self.values.p_bar, self.p_sigma_z)

    def p_limit(self, inspections: int) -> float:
        """UCL of the failing fraction for a lot of ``inspections`` inspections."""
        return self.p_limit_count(inspections) / inspections

    def with_dispersion(self, points: Sequence[LotPoint]) -> Baseline:
        """This baseline with sigma_z filled in from its own lots among ``points`` where not known.

        A baseline read back from ``ops.spc_baseline`` carries the centre lines and
        its lot ids; sigma_z is re-derived from those lots (the same frozen lots,
        against the same frozen centre lines). Only they matter: ``points`` may be
        just the baseline's lots (the outbox reads them by id), never all history.
        """
        if self.values.u_sigma_z is not None and self.values.p_sigma_z is not None:
            return self
        own = set(self.lot_ids)
        lots = [p for p in time_order(points) if p.lot_id in own]
        return dataclasses.replace(self, values=_with_sigma_z(self.values, lots))


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
    centre = SpcBaselineValues(
        mean_score=statistics.fmean(scores),
        sigma_score=max(sigma, min_sigma),
        u_bar=sum(p.defect_count for p in points) / chips if chips else 0.0,
        p_bar=failing / inspections if inspections else 0.0,
    )
    return _with_sigma_z(centre, points)


def _with_sigma_z(values: SpcBaselineValues, points: Sequence[LotPoint]) -> SpcBaselineValues:
    """``values`` with Laney's sigma_z of ``points`` (time order) for the u- and p-chart where not set."""
    u_sigma_z = values.u_sigma_z
    if u_sigma_z is None:
        u_sigma_z = laney_sigma_z("defects", [(p.defect_count, p.chips) for p in points], values.u_bar)
    p_sigma_z = values.p_sigma_z
    if p_sigma_z is None:
        p_sigma_z = laney_sigma_z("failing", [(p.failing, p.inspections) for p in points], values.p_bar)
    return dataclasses.replace(values, u_sigma_z=u_sigma_z, p_sigma_z=p_sigma_z)


def _special_cause(point: LotPoint, centre: SpcBaselineValues) -> bool:
    """Outside the limits (either side) of the lot-mean chart (3 sigma), u- or p-chart (tail TAIL each side)."""
    assert point.mean_score is not None
    u_z, p_z = centre.u_sigma_z or 1.0, centre.p_sigma_z or 1.0

    def beyond(kind: str, count: int, n: int, rate: float, sigma_z: float) -> bool:
        if not n:
            return False
        return count > upper_limit_count(kind, n, rate, sigma_z) or lower_tail(kind, n, rate, sigma_z, count) <= TAIL

    return (
        abs(point.mean_score - centre.mean_score) > 3.0 * centre.sigma_score
        or (centre.u_bar > 0 and beyond("defects", point.defect_count, point.chips, centre.u_bar, u_z))
        or (0 < centre.p_bar < 1 and beyond("failing", point.failing, point.inspections, centre.p_bar, p_z))
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
    """SPC violations of the lots in ``judge`` (all when None), each against the time-ordered series.

    ``points`` need not be the whole series: for each judged lot, the ``LOOKBACK``
    scored lots before it (or all of them, near the start of history) must be
    among them, which the changed lots, their ``LOOKBACK`` scored neighbours on
    either side and ``lots_to_rejudge`` guarantee. A stored baseline's sigma_z
    comes from its own lots, so pass it through ``with_dispersion`` first when
    they are not among ``points``.
    """
    ordered = time_order(points)
    enabled = set(settings.rules)
    baseline = baseline.with_dispersion(ordered)
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

    zones = ((WE2, 2.0, 3, 2), (WE3, 1.0, 5, 4), (WE4, settings.we4_margin_sigma, 8, 8))
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
            ucl = baseline.u_limit_count(point.chips)
            if point.defect_count > ucl:
                limit = ucl / point.chips
                message = (
                    f"defects per chip {point.u:g} above UCL {limit:g} ({point.defect_count} > {ucl} defects "
                    f"on n={point.chips} chips; u_bar {baseline.values.u_bar:g}, sigma_z {baseline.u_sigma_z:.3g})"
                )
                out.append(violation(U_CHART, point, point.u, limit, message))
        if P_CHART in enabled and point.p is not None and point.inspections and 0 < baseline.values.p_bar < 1:
            ucl = baseline.p_limit_count(point.inspections)
            if point.failing > ucl:
                limit = ucl / point.inspections
                message = (
                    f"failing fraction {point.p:g} above UCL {limit:g} ({point.failing} > {ucl} failing of "
                    f"n={point.inspections}; p_bar {baseline.values.p_bar:g}, sigma_z {baseline.p_sigma_z:.3g})"
                )
                out.append(violation(P_CHART, point, point.p, limit, message))
    return out


def lots_to_rejudge(points: Sequence[LotPoint], changed: set[str]) -> set[str]:
    """The changed lots plus the ``LOOKBACK`` scored lots after each (their windows include it).

    ``points`` may be a part of the series holding, around each changed lot, its
    ``LOOKBACK`` scored neighbours on either side: its successors there are its
    successors in the whole series.
    """
    scored = [p.lot_id for p in time_order(points) if p.mean_score is not None]
    judge = set(changed)
    for index, lot_id in enumerate(scored):
        if lot_id in changed:
            judge.update(scored[index + 1 : index + 1 + LOOKBACK])
    return judge
