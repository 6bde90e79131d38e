"""Injected excursions, and the ground truth that says which lot-level rules must catch them.

Measured at 200 inspections a lot, clean lots have a mean score of 0.931
(lot-to-lot sd 0.0015), pass rate 0.98, 0.10 defects per chip and no
critical defect: none of the shipped lot rules (``rules.yaml`` v1: mean
< 0.85, pass rate < 0.90, density > 0.5, critical defects > 0) fires on
them. Each excursion breaks several:

* ``station_drift`` — an optical tool drifts (focus/dose): inspections at
  that tool on the next ``drift_lots`` (6) lots routed through it gain
  Poisson(level) extra ``pattern_bridge`` defects (mostly MEDIUM/HIGH), the
  level rising linearly from 0.8 to 9 lot after lot. Lot means fall
  progressively from ≈ 0.90 (SPC, pass rate, critical defects) to ≈ 0.64
  (``lot_mean_score`` CRITICAL); density 0.45 → 4 per chip.
* ``particle`` — a chamber sheds particles: every die gets 14× its usual
  defect mean again as particles with a larger-particle severity mix:
  density ≈ 1.4 per chip (15× clean), mean ≈ 0.83, pass rate ≈ 0.61.
* ``scratch`` — a handling robot scratches every wafer of the lot; review
  sampling puts half of the inspected dies on the scratch, which adds 3
  defects a die skewing HIGH/CRITICAL: ≈ 80 critical defects, mean ≈ 0.76.

Only lots after the first ``baseline_lots`` (default 30, at most a third of
the run) get excursions, so SPC has in-control lots to set its limits on.

``expected_rules`` lists rules that must fire on the lot (others may too),
derived from the lot's realized figures: every shipped lot rule whose
limit the lot breaks (``LOT_RULES`` mirrors ``rules.yaml`` v2, unchanged
since v1), plus ``spc_*`` (any SPC rule) when the lot mean lies below the
clean mean − 3 max(sd, 0.005) or its defect / failing count lies above the
u / p chart's UCL on the clean lots (the shipped charts' limits from
``rules.spc``: Laney sigma_z, probability limits at the 3-sigma tail).
``expected_alert_level`` is the worst level among the fixed rules.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from chipq_pipelines.rules.spc import laney_sigma_z, upper_limit_count

CLEAN = "clean"
STATION_DRIFT = "station_drift"
PARTICLE = "particle"
SCRATCH = "scratch"
EXCURSION_KINDS = (STATION_DRIFT, PARTICLE, SCRATCH)

DRIFT_LEVEL_FIRST = 0.8
DRIFT_LEVEL_LAST = 9.0
DRIFT_DEFECT_TYPE = "pattern_bridge"
DRIFT_SEVERITY = (0.10, 0.40, 0.40, 0.10)
PARTICLE_FACTOR = 15.0  # total defect mean on a particle lot, × clean
PARTICLE_SEVERITY = (0.15, 0.40, 0.35, 0.10)
SCRATCH_SEVERITY = (0.05, 0.25, 0.45, 0.25)
SCRATCH_REVIEW_SHARE = 0.5
SCRATCH_EXCURSION_DEFECTS = 3.0  # per die on the scratch, on top of the wafer's own

PASS_THRESHOLD = 0.85
#: The shipped lot rules (``chipq_pipelines/rules/rules.yaml`` v2 = v1): metric, direction, WARNING, CRITICAL limit.
LOT_RULES: dict[str, tuple[str, str, float, float]] = {
    "lot_mean_score": ("mean_quality_score", "below", 0.85, 0.70),
    "lot_pass_rate": ("pass_rate", "below", 0.90, 0.75),
    "lot_defect_density": ("defect_density", "above", 0.50, 1.00),
    "lot_critical_defects": ("critical_defects", "above", 0, 4),
}
SPC_SIGMA_FLOOR = 0.005  # the shipped SPC floor under the lot-mean sigma


@dataclass
class LotPlan:
    """What happens to one lot: when it starts, its route of tools and its excursion, if any."""

    seq: int
    lot_id: str
    start_ms: int
    route: dict[str, str]  # inspection type -> tool
    inspections: int
    kind: str = CLEAN
    drift_station: str | None = None
    drift_level: float = 0.0


@dataclass(frozen=True)
class LotStats:
    """A lot's realized figures, computed like ``marts.lot_quality_scores`` (one completion per inspection)."""

    inspections: int
    chips: int
    mean_quality_score: float
    pass_rate: float
    defect_count: int
    defect_density: float
    critical_defects: int


@dataclass(frozen=True)
class Excursion:
    """One injected excursion on one lot, with the rules that must catch it."""

    lot_id: str
    kind: str
    expected_rules: list[str]
    expected_alert_level: str | None
    station_id: str | None = None
    detail: dict[str, float] = field(default_factory=dict)


@dataclass
class GroundTruth:
    """Which lots were made bad, how, and which rules should fire; the clean lots; the wafer maps."""

    excursions: list[Excursion]
    clean_lots: list[str]
    lot_stats: dict[str, LotStats]
    baseline: dict[str, float]
    wafer_patterns: dict[str, str]  # wafer_id -> WM-811K class, for wafers with a pattern

    def excursion_lots(self) -> list[str]:
        return [e.lot_id for e in self.excursions]

    def pattern_counts(self, wafers: int) -> dict[str, int]:
        counts: dict[str, int] = {"none": wafers - len(self.wafer_patterns)}
        for pattern in self.wafer_patterns.values():
            counts[pattern] = counts.get(pattern, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "excursions": [asdict(e) for e in self.excursions],
            "clean_lots": self.clean_lots,
            "baseline": self.baseline,
            "lot_stats": {lot: asdict(s) for lot, s in self.lot_stats.items()},
            "wafer_patterns": self.wafer_patterns,
            "rule_limits_assumed": {
                **{
                    rule: {"metric": m, "direction": d, "WARNING": w, "CRITICAL": c}
                    for rule, (m, d, w, c) in LOT_RULES.items()
                },
                "spc_*": (
                    "mean score below clean mean - 3 max(sd, 0.005), or defects / failing inspections above the "
                    "u / p chart's UCL on clean lots (Laney sigma_z, P(X > UCL) <= 0.00135)"
                ),
            },
        }


def plan_excursions(
    rng: random.Random,
    lots: Sequence[LotPlan],
    drift_station_pool: Sequence[str],
    *,
    drift_type: str,
    baseline_lots: int,
    drift_episodes: int,
    drift_lots: int,
    particle_lots: int,
    scratch_lots: int,
) -> None:
    """Mark lots (in place) as drift, particle or scratch lots; the first ``baseline_lots`` stay clean."""
    first = min(baseline_lots, len(lots) // 3)
    eligible = list(lots[first:])
    if not eligible:
        return
    # Drift episodes: one per segment of the run, on a random optical tool, over the next lots routed to it.
    segment = len(eligible) / max(1, drift_episodes)
    for episode in range(drift_episodes):
        begin = int(episode * segment)
        start = begin + rng.randrange(max(1, int(segment / 2)))
        station = rng.choice(list(drift_station_pool))
        affected = [lot for lot in eligible[start : int((episode + 1) * segment)] if lot.route[drift_type] == station]
        affected = affected[:drift_lots]
        for k, lot in enumerate(affected):
            step = k / (len(affected) - 1) if len(affected) > 1 else 1.0
            lot.kind = STATION_DRIFT
            lot.drift_station = station
            lot.drift_level = round(DRIFT_LEVEL_FIRST + (DRIFT_LEVEL_LAST - DRIFT_LEVEL_FIRST) * step, 3)
    free = [lot for lot in eligible if lot.kind == CLEAN]
    chosen = rng.sample(free, min(len(free), particle_lots + scratch_lots))
    for lot, kind in zip(chosen, [PARTICLE] * particle_lots + [SCRATCH] * scratch_lots, strict=False):
        lot.kind = kind


def lot_stats(completed: Iterable[Mapping[str, Any]], pass_threshold: float = PASS_THRESHOLD) -> dict[str, LotStats]:
    """Per-lot figures over INSPECTION_COMPLETED events (each inspection once)."""
    acc: dict[str, dict[str, Any]] = {}
    for event in completed:
        lot = acc.setdefault(
            event["batch_id"], {"scores": [], "chips": set(), "passed": 0, "defects": 0, "critical": 0}
        )
        score = event["quality_score"]
        lot["scores"].append(score)
        lot["chips"].add(event["chip_id"])
        lot["passed"] += score >= pass_threshold
        lot["defects"] += len(event["defects"])
        lot["critical"] += sum(1 for d in event["defects"] if d["severity"] == "CRITICAL")
    return {
        lot_id: LotStats(
            inspections=len(a["scores"]),
            chips=len(a["chips"]),
            mean_quality_score=round(statistics.fmean(a["scores"]), 5),
            pass_rate=round(a["passed"] / len(a["scores"]), 5),
            defect_count=a["defects"],
            defect_density=round(a["defects"] / len(a["chips"]), 5),
            critical_defects=a["critical"],
        )
        for lot_id, a in acc.items()
    }


def _breaches(stats: LotStats) -> dict[str, str]:
    """Shipped lot rules the lot breaks, with the worst level of each."""
    out = {}
    for rule, (metric, direction, warning, critical) in LOT_RULES.items():
        sign = -1.0 if direction == "below" else 1.0  # "beyond" = above after the flip
        value = sign * float(getattr(stats, metric))
        if value > sign * critical:
            out[rule] = "CRITICAL"
        elif value > sign * warning:
            out[rule] = "WARNING"
    return out


def _failing(stats: LotStats) -> int:
    return round((1 - stats.pass_rate) * stats.inspections)


def ground_truth(lots: Sequence[LotPlan], stats: Mapping[str, LotStats], wafer_patterns: dict[str, str]) -> GroundTruth:
    """The truth file's content: realized lot figures decide the rules each excursion must trip."""
    clean = [lot.lot_id for lot in lots if lot.kind == CLEAN and lot.lot_id in stats]
    clean_stats = [stats[lot] for lot in clean]
    means = [s.mean_quality_score for s in clean_stats]
    base_mean = statistics.fmean(means) if means else 0.93
    base_sd = max(statistics.stdev(means) if len(means) > 2 else 0.0, SPC_SIGMA_FLOOR)
    chips = sum(s.chips for s in clean_stats) or 1
    inspections = sum(s.inspections for s in clean_stats) or 1
    u_bar = sum(s.defect_count for s in clean_stats) / chips
    p_bar = sum((1 - s.pass_rate) * s.inspections for s in clean_stats) / inspections
    u_sigma_z = laney_sigma_z("defects", [(s.defect_count, s.chips) for s in clean_stats], u_bar)
    p_sigma_z = laney_sigma_z("failing", [(_failing(s), s.inspections) for s in clean_stats], p_bar)
    baseline = {
        "clean_lots": float(len(clean)),
        "mean_quality_score": round(base_mean, 5),
        "mean_quality_score_sd": round(statistics.stdev(means) if len(means) > 2 else 0.0, 5),
        "min_mean_quality_score": round(min(means), 5) if means else 0.0,
        "defect_density": round(u_bar, 5),
        "max_defect_density": round(max((s.defect_density for s in clean_stats), default=0.0), 5),
        "failing_fraction": round(p_bar, 5),
        "u_sigma_z": round(u_sigma_z, 4),
        "p_sigma_z": round(p_sigma_z, 4),
        "min_pass_rate": round(min((s.pass_rate for s in clean_stats), default=0.0), 5),
        "max_critical_defects": float(max((s.critical_defects for s in clean_stats), default=0)),
    }
    excursions = []
    for lot in lots:
        if lot.kind == CLEAN or lot.lot_id not in stats:
            continue
        s = stats[lot.lot_id]
        breaches = _breaches(s)
        rules = sorted(breaches)
        spc = (
            s.mean_quality_score < base_mean - 3 * base_sd
            or s.defect_count > upper_limit_count("defects", s.chips, u_bar, u_sigma_z)
            or _failing(s) > upper_limit_count("failing", s.inspections, p_bar, p_sigma_z)
        )
        if spc:
            rules.append("spc_*")
        level = "CRITICAL" if "CRITICAL" in breaches.values() else ("WARNING" if rules else None)
        detail = {
            "mean_quality_score": s.mean_quality_score,
            "pass_rate": s.pass_rate,
            "defect_density": s.defect_density,
            "critical_defects": float(s.critical_defects),
        }
        if lot.kind == STATION_DRIFT:
            detail["drift_level"] = lot.drift_level
        excursions.append(Excursion(lot.lot_id, lot.kind, rules, level, lot.drift_station, detail))
    return GroundTruth(excursions, clean, dict(stats), baseline, wafer_patterns)
