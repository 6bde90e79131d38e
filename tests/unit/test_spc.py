"""SPC on lots: Western Electric rules, u- and p-charts, and the frozen baseline."""

from __future__ import annotations

import datetime as dt

import pytest

from chipq_pipelines.rules.loader import SpcBaselineValues, SpcSettings
from chipq_pipelines.rules.spc import Baseline, LotPoint, evaluate_spc, freeze_baseline, lots_to_rejudge

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
BASELINE = Baseline(SpcBaselineValues(mean_score=0.95, sigma_score=0.01, u_bar=0.1, p_bar=0.05))
SETTINGS = SpcSettings()


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


def test_we4_eight_in_a_row_below_the_centre() -> None:
    points = series(*[0.945] * 9)
    assert fired(points) == {("spc_we4_8_in_a_row", "L007"), ("spc_we4_8_in_a_row", "L008")}
    assert fired(series(*[0.945] * 7, 0.95)) == set()


def test_time_order_not_arrival_order_decides() -> None:
    points = [lot(3, 0.925), lot(1, 0.925), lot(2, 0.95)]
    assert fired(points) == {("spc_we2_2of3_beyond_2sigma", "L003")}


def test_u_chart_limit_narrows_with_chip_count() -> None:
    # u = 0.25: above UCL(100) = 0.1 + 3 sqrt(0.001) = 0.195, below UCL(20) = 0.312.
    assert fired([lot(0, 0.95, defects=25, chips=100)]) == {("spc_u_chart_defects_per_chip", "L000")}
    assert fired([lot(0, 0.95, defects=5, chips=20)]) == set()
    violation = evaluate_spc([lot(0, 0.95, defects=25, chips=100)], BASELINE, SETTINGS, "1")[0]
    assert violation.observed_value == 0.25 and violation.threshold == pytest.approx(0.1 + 3 * (0.1 / 100) ** 0.5)


def test_p_chart_flags_high_failing_fraction_only() -> None:
    assert fired([lot(0, 0.95, pass_rate=0.7)]) == {("spc_p_chart_failing_fraction", "L000")}
    assert fired([lot(0, 0.95, pass_rate=0.85)]) == set()


def test_baseline_freezes_only_with_twenty_in_control_lots_and_drops_special_causes() -> None:
    scores = [0.95 + 0.002 * ((i % 5) - 2) for i in range(26)]
    scores[4] = 0.70  # a special cause inside the window
    points = series(*scores)
    assert freeze_baseline(points[:24], SETTINGS) is None, "waits for baseline_lots (25) candidates"
    baseline = freeze_baseline(points, SETTINGS)
    assert baseline is not None and "L004" in baseline.removed_lot_ids and "L004" not in baseline.lot_ids
    assert len(baseline.lot_ids) == 24, "the first 25, minus the special cause"
    assert baseline.values.mean_score == pytest.approx(0.95, abs=0.001)
    assert baseline.values.sigma_score == SETTINGS.min_sigma or baseline.values.sigma_score < 0.005


def test_baseline_excludes_lots_that_break_the_plain_rules() -> None:
    points = series(*[0.95] * 30)
    excluded = {"L000", "L001"}
    baseline = freeze_baseline(points, SETTINGS, lambda p: p.lot_id not in excluded)
    assert baseline is not None and not excluded & set(baseline.lot_ids)


def test_a_changed_lot_rejudges_the_lots_whose_windows_hold_it() -> None:
    points = series(*[0.95] * 12)
    assert lots_to_rejudge(points, {"L002"}) == {f"L{i:03d}" for i in range(2, 10)}
