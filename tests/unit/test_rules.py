"""The rules file: shipped defaults, overrides, errors that name the line, fixed-threshold evaluation."""

from __future__ import annotations

import datetime as dt

import pytest

from chipq_pipelines.rules import RulesError, evaluate_day, evaluate_lot, load_rules, parse_rules

LOT = {"lot_id": "L'1", "mean_quality_score": 0.9, "pass_rate": 1.0, "defect_density": 0.1, "critical_defects": 0}


def test_shipped_rules_mirror_the_guide() -> None:
    rules = load_rules()
    mean = next(r for r in rules.lot_rules if r.rule == "lot_mean_score")
    assert (mean.metric, mean.direction, mean.levels) == (
        "mean_quality_score",
        "below",
        {"WARNING": 0.85, "CRITICAL": 0.70},
    )
    assert {r.rule for r in rules.lot_rules} == {
        "lot_mean_score", "lot_pass_rate", "lot_defect_density", "lot_critical_defects"
    }  # fmt: skip
    assert [r.rule for r in rules.day_rules] == ["daily_defect_rate"]
    assert rules.spc.enabled and rules.spc.min_baseline_lots >= 20
    assert rules.version == "2", "v2: u/p probability limits with Laney sigma_z, WE4 margin"
    assert rules.spc.baseline_lots == 30 and rules.spc.we4_margin_sigma == 0.5


def test_spc_baseline_and_we4_margin_are_validated() -> None:
    pinned = parse_rules(
        "version: 1\nspc:\n  baseline: {mean_score: 0.9, sigma_score: 0.01, u_bar: 0.1, p_bar: 0.02, u_sigma_z: 1.3}\n"
    )
    assert pinned.spc.baseline is not None
    assert (pinned.spc.baseline.u_sigma_z, pinned.spc.baseline.p_sigma_z) == (1.3, 1.0), "unset sigma_z: plain chart"
    assert parse_rules("version: 1\nspc:\n  we4_margin_sigma: 0\n").spc.we4_margin_sigma == 0.0


def test_chipq_rules_overrides_the_shipped_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "version: 7\nlot_rules:\n"
        "  - {rule: low, metric: mean_quality_score, direction: below, levels: {WARNING: 0.5}}\n"
    )
    monkeypatch.setenv("CHIPQ_RULES", str(path))
    rules = load_rules()
    assert rules.version == "7" and [r.rule for r in rules.lot_rules] == ["low"] and not rules.spc.enabled


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        (
            "version: 1\nlot_rules:\n  - rule: x\n    metric: score\n    direction: below\n    levels: {WARNING: 1}\n",
            4,
            "metric",
        ),
        ("version: 1\nlot_rules: [\n", 3, "invalid YAML"),
        (
            "version: 1\nlot_rules:\n"
            "  - {rule: x, metric: pass_rate, direction: below, levels: {WARNING: 0.5, CRITICAL: 0.9}}\n",
            3,
            "CRITICAL",
        ),
        ("version: 1\nspc:\n  min_baseline_lots: 5\n", 3, "at least 20"),
        ("version: 1\nspc:\n  rules: [spc_we9]\n", 3, "spc_we9"),
        ("version: 1\nspc:\n  we4_margin_sigma: -1\n", 3, "we4_margin_sigma"),
        (
            "version: 1\nspc:\n  baseline: {mean_score: 0.9, sigma_score: 0.01, u_bar: 0.1, p_bar: 0.02,\n"
            "    u_sigma_z: 0.8}\n",
            4,
            "u_sigma_z",
        ),
        ("version: 1\nbogus: 2\n", 2, "unknown key"),
        ("lot_rules: []\n", 1, "version"),
        (
            "version: 1\nday_rules:\n  - {rule: d, metric: defect_rate, direction: above, levels: {WARNING: high}}\n",
            3,
            "number",
        ),
    ],
)
def test_a_malformed_file_is_an_error_naming_the_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(RulesError) as error:
        parse_rules(text, "rules.yaml")
    assert error.value.line == line
    assert str(error.value).startswith(f"rules.yaml:{line}: ") and fragment in str(error.value)


def test_missing_override_file_names_the_variable(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CHIPQ_RULES", str(tmp_path / "nope.yaml"))
    with pytest.raises(RulesError, match="CHIPQ_RULES="):
        load_rules()


@pytest.mark.parametrize(
    ("score", "expected"), [(0.9, None), (0.85, None), (0.84, "WARNING"), (0.70, "WARNING"), (0.69, "CRITICAL")]
)
def test_lot_mean_score_levels_and_boundaries(score: float, expected: str | None) -> None:
    violations = [
        v for v in evaluate_lot(load_rules(), {**LOT, "mean_quality_score": score}) if v.rule == "lot_mean_score"
    ]
    assert [v.alert_level for v in violations] == ([expected] if expected else [])
    if expected:
        assert violations[0].observed_value == score and violations[0].threshold == (
            0.85 if expected == "WARNING" else 0.70
        )


def test_every_lot_rule_fires_on_its_metric() -> None:
    rules = load_rules()
    bad = {**LOT, "pass_rate": 0.5, "defect_density": 2.0, "critical_defects": 9, "mean_quality_score": None}
    fired = {(v.rule, v.alert_level) for v in evaluate_lot(rules, bad)}
    assert fired == {
        ("lot_pass_rate", "CRITICAL"),
        ("lot_defect_density", "CRITICAL"),
        ("lot_critical_defects", "CRITICAL"),
    }
    assert evaluate_lot(rules, LOT) == []


def test_daily_rate_uses_per_defect_type_limits() -> None:
    day = dt.date(2024, 5, 1)
    rows = [
        {"event_date": day, "defect_type": "particle", "defect_rate": 0.03},
        {"event_date": day, "defect_type": "scratch", "defect_rate": 0.03},
        {"event_date": day, "defect_type": "edge-ring", "defect_rate": 0.2},
    ]
    fired = {(v.defect_type, v.alert_level, v.partition) for v in evaluate_day(load_rules(), rows)}
    assert fired == {("scratch", "WARNING", "2024-05-01/scratch"), ("edge-ring", "CRITICAL", "2024-05-01/edge-ring")}


def test_event_ids_are_deterministic_per_fact_and_version() -> None:
    rules = load_rules()
    first = evaluate_lot(rules, {**LOT, "mean_quality_score": 0.8})[0]
    again = evaluate_lot(rules, {**LOT, "mean_quality_score": 0.81})[0]
    worse = evaluate_lot(rules, {**LOT, "mean_quality_score": 0.6})[0]
    assert first.event_id == again.event_id, "same rule, lot, level and version: same alert"
    assert worse.event_id != first.event_id, "an escalation to CRITICAL is a new alert"
    shipped = load_rules.__globals__["shipped_rules_text"]()
    assert f"\nversion: {rules.version}\n" in shipped
    newer = parse_rules(shipped.replace(f"\nversion: {rules.version}\n", "\nversion: next\n"))
    assert newer.version == "next"
    assert evaluate_lot(newer, {**LOT, "mean_quality_score": 0.8})[0].event_id != first.event_id
