"""SPC on lots: Western Electric rules, u- and p-charts, and the frozen baseline."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import pytest

from chipq_pipelines.rules.loader import SpcBaselineValues, SpcSettings
from chipq_pipelines.rules.spc import (
    TAIL,
    Baseline,
    LotPoint,
    evaluate_spc,
    freeze_baseline,
    laney_sigma_z,
    lots_to_rejudge,
    upper_limit_count,
)

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
BASELINE = Baseline(SpcBaselineValues(mean_score=0.95, sigma_score=0.01, u_bar=0.1, p_bar=0.05))
SETTINGS = SpcSettings()
U, P = "spc_u_chart_defects_per_chip", "spc_p_chart_failing_fraction"


def poisson_above(count: int, mean: float) -> float:
    """P(X > count), X ~ Poisson(mean), summed independently of the module."""
    return 1.0 - sum(math.exp(-mean) * mean**k / math.factorial(k) for k in range(count + 1))


def binomial_above(count: int, n: int, p: float) -> float:
    return 1.0 - sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(count + 1))


def lot(index: int, score: float | None, defects: int = 2, chips: int = 20, pass_rate: float = 1.0) -> LotPoint:
    return LotPoint(f"L{index:03d}", T0 + dt.timedelta(hours=index), score, defects, chips, chips, pass_rate)


def fired(points: list[LotPoint], baseline: Baseline = BASELINE) -> set[tuple[str, str]]:
    return {(v.rule, v.lot_id) for v in evaluate_spc(points, baseline, SETTINGS, "1")}  # type: ignore[misc]


def series(*scores: float) -> list[LotPoint]:
    return [lot(i, s) for i, s in enumerate(scores)]


def test_in_control_series_raises_nothing() -> None:
    assert fired(series(0.95, 0.96, 0.94, 0.955, 0.945, 0.95, 0.97, 0.941)) == set()


def test_we1_one_point_below_three_sigma_and_never_above() -> None:
    assert fired(series(0.95, 0.91, 0.99)) == {("spc_we1_beyond_3sigma", "L001")}


def test_we2_two_of_three_below_two_sigma() -> None:
    assert fired(series(0.95, 0.925, 0.95, 0.925)) == {("spc_we2_2of3_beyond_2sigma", "L003")}
    assert fired(series(0.925, 0.95, 0.95, 0.925)) == set()


def test_we3_four_of_five_below_one_sigma() -> None:
    points = series(0.95, 0.935, 0.935, 0.95, 0.935, 0.935)
    assert fired(points) == {("spc_we3_4of5_beyond_1sigma", "L005")}


def test_we4_eight_in_a_row_below_the_centre_minus_the_margin() -> None:
    # Shipped: a lot counts toward the run only below mu - 0.5 sigma = 0.945.
    points = series(*[0.943] * 9)
    assert fired(points) == {("spc_we4_8_in_a_row", "L007"), ("spc_we4_8_in_a_row", "L008")}
    assert fired(series(*[0.943] * 7, 0.95)) == set()
    assert fired(series(*[0.946] * 9)) == set(), "below mu but within the margin: not a run"
    violation = evaluate_spc(series(*[0.943] * 8), BASELINE, SETTINGS, "1")[0]
    assert violation.threshold == pytest.approx(0.945) and "mu - 0.5 sigma" in violation.message


def test_we4_margin_zero_is_the_textbook_rule() -> None:
    textbook = dataclasses.replace(SETTINGS, we4_margin_sigma=0.0)
    fired_textbook = {(v.rule, v.lot_id) for v in evaluate_spc(series(*[0.946] * 8), BASELINE, textbook, "1")}
    assert fired_textbook == {("spc_we4_8_in_a_row", "L007")}


def test_time_order_not_arrival_order_decides() -> None:
    points = [lot(3, 0.925), lot(1, 0.925), lot(2, 0.95)]
    assert fired(points) == {("spc_we2_2of3_beyond_2sigma", "L003")}


def test_u_chart_probability_limit_just_inside_and_just_outside() -> None:
    # 20 chips at u_bar 0.1: defects ~ Poisson(2). UCL = smallest c with P(X > c) <= 0.00135 = 7
    # (P(X > 7) = 0.0011, P(X > 6) = 0.0045); the old u_bar + 3 sqrt(u_bar/n) = 0.312 (6.2 defects) fired at 7.
    assert poisson_above(7, 2.0) <= TAIL < poisson_above(6, 2.0)
    assert upper_limit_count("defects", 20, 0.1) == 7
    assert fired([lot(0, 0.95, defects=7, chips=20)]) == set()
    assert fired([lot(0, 0.95, defects=8, chips=20)]) == {(U, "L000")}
    violation = evaluate_spc([lot(0, 0.95, defects=8, chips=20)], BASELINE, SETTINGS, "1")[0]
    assert violation.observed_value == 0.4 and violation.threshold == pytest.approx(7 / 20)
    assert "8 > 7 defects" in violation.message


@pytest.mark.parametrize("mean", [0.5, 3.4, 19.5, 60.0])
def test_poisson_and_binomial_limits_sit_at_the_three_sigma_tail(mean: float) -> None:
    ucl = upper_limit_count("defects", 200, mean / 200)
    assert poisson_above(ucl, mean) <= TAIL < poisson_above(ucl - 1, mean)
    ucl = upper_limit_count("failing", 200, mean / 200)
    assert binomial_above(ucl, 200, mean / 200) <= TAIL < binomial_above(ucl - 1, 200, mean / 200)


def test_u_chart_limit_narrows_with_chip_count() -> None:
    # u = 0.25: 25 defects on 100 chips (Poisson(10): UCL 21) fires, 5 on 20 chips (UCL 7) does not.
    assert upper_limit_count("defects", 100, 0.1) == 21
    assert fired([lot(0, 0.95, defects=25, chips=100)]) == {(U, "L000")}
    assert fired([lot(0, 0.95, defects=5, chips=20)]) == set()


def test_over_dispersion_widens_the_u_limit() -> None:
    # Negative binomial of variance sigma_z^2 * mean: 200 chips at u_bar 0.1 (mean 20).
    plain, wide = upper_limit_count("defects", 200, 0.1), upper_limit_count("defects", 200, 0.1, 1.3)
    assert plain == 35 and wide > plain + 3
    dispersed = dataclasses.replace(BASELINE, values=dataclasses.replace(BASELINE.values, u_sigma_z=1.3))
    assert fired([lot(0, 0.95, defects=plain + 1, chips=200)]) == {(U, "L000")}
    assert fired([lot(0, 0.95, defects=plain + 1, chips=200)], dispersed) == set()
    assert fired([lot(0, 0.95, defects=wide + 1, chips=200)], dispersed) == {(U, "L000")}


def test_laney_sigma_z_is_the_moving_range_of_z_scores_and_at_least_one() -> None:
    # Mean 20 per lot; counts 10, 30, 10, ...: z = -+10/sqrt(20), moving range 20/sqrt(20).
    alternating = [(10 if i % 2 else 30, 200) for i in range(30)]
    assert laney_sigma_z("defects", alternating, 0.1) == pytest.approx(20 / math.sqrt(20) / 1.128)
    assert laney_sigma_z("defects", [(20, 200)] * 30, 0.1) == 1.0, "less spread than Poisson: plain chart"
    assert laney_sigma_z("failing", [(0, 200)], 0.02) == 1.0, "one lot: no moving range"


def test_baseline_estimates_over_dispersion_and_a_stored_baseline_reuses_it() -> None:
    # 30 baseline lots of 200 chips, defects 14/26 alternating (z = -+1.34: sigma_z 2.38).
    counts = [14 if i % 2 else 26 for i in range(30)]
    points = [LotPoint(f"L{i:03d}", T0 + dt.timedelta(hours=i), 0.95, c, 200, 200, 1.0) for i, c in enumerate(counts)]
    baseline = freeze_baseline(points, SETTINGS)
    assert baseline is not None and not baseline.removed_lot_ids
    assert baseline.values.u_bar == pytest.approx(0.1)
    assert baseline.values.u_sigma_z == pytest.approx(12 / math.sqrt(20) / 1.128)
    wide = baseline.u_limit_count(200)
    assert wide > upper_limit_count("defects", 200, 0.1) + 10
    later = LotPoint("L100", T0 + dt.timedelta(days=30), 0.95, wide, 200, 200, 1.0)
    over = dataclasses.replace(later, lot_id="L101", defect_count=wide + 1)
    judged = [*points, later, over]
    assert {(v.rule, v.lot_id) for v in evaluate_spc(judged, baseline, SETTINGS, "1")} == {(U, "L101")}
    # As read back from ops.spc_baseline: centre lines and lot ids, no sigma_z: derived from those lots.
    stored = Baseline(SpcBaselineValues(0.95, 0.005, baseline.values.u_bar, 0.0), baseline.lot_ids)
    assert {(v.rule, v.lot_id) for v in evaluate_spc(judged, stored, SETTINGS, "1")} == {(U, "L101")}
    assert stored.with_dispersion(judged).values.u_sigma_z == pytest.approx(baseline.values.u_sigma_z)


def test_u_and_p_charts_flag_degradation_only() -> None:
    clean = [lot(0, 0.95, defects=0, chips=200, pass_rate=1.0)]
    assert fired(clean) == set(), "no defects and no failures are never an alarm"


def test_baseline_freezes_only_with_twenty_in_control_lots_and_drops_special_causes() -> None:
    scores = [0.95 + 0.002 * ((i % 5) - 2) for i in range(31)]
    scores[4] = 0.70  # a special cause inside the window
    points = series(*scores)
    assert freeze_baseline(points[:29], SETTINGS) is None, "waits for baseline_lots (30) candidates"
    baseline = freeze_baseline(points, SETTINGS)
    assert baseline is not None and "L004" in baseline.removed_lot_ids and "L004" not in baseline.lot_ids
    assert len(baseline.lot_ids) == 29, "the first 30, minus the special cause"
    assert baseline.values.mean_score == pytest.approx(0.95, abs=0.001)
    assert baseline.values.sigma_score == SETTINGS.min_sigma or baseline.values.sigma_score < 0.005


def test_baseline_excludes_lots_that_break_the_plain_rules() -> None:
    points = series(*[0.95] * 32)
    excluded = {"L000", "L001"}
    baseline = freeze_baseline(points, SETTINGS, lambda p: p.lot_id not in excluded)
    assert baseline is not None and not excluded & set(baseline.lot_ids)


def test_a_changed_lot_rejudges_the_lots_whose_windows_hold_it() -> None:
    points = series(*[0.95] * 12)
    assert lots_to_rejudge(points, {"L002"}) == {f"L{i:03d}" for i in range(2, 10)}
