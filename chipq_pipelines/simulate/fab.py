"""The simulated fab: tools, inspection types, defect types, wafer maps and the score model.

Numbers chosen (and why):

* **Line.** A lot is 25 wafers (300 mm, 10 × 10 mm dies, 3 mm edge exclusion:
  ``len(DIE_GRID)`` ≈ 640 dies). Each lot visits one tool per inspection
  type (its *route*); each sampled die is inspected once, by one type.
* **Tools.** Eight: ``OPT-01..03`` (optical), ``SEM-01..02`` (sem_review),
  ``ET-01..02`` (electrical_test), ``MAC-01`` (macro). Inspection mix:
  optical 45 %, electrical_test 30 %, sem_review 15 %, macro 10 %.
* **Defect types**, Pareto-like base mix: particle 32 %, residue 21 %,
  pattern_bridge 12 %, void 9 %, open 7 %, scratch 5 %, short 5 %,
  film_peel 4 %, crack 3 %, contamination 2 % (the top three ≈ 65 %). Each
  inspection type sees its own slice of that mix (electrical test finds
  opens and shorts, optical finds particles and scratches, …), and each
  defect type has its own severity mix (opens, shorts, cracks skew HIGH).
  A healthy line makes no CRITICAL (killer) defect: those come from
  excursions only, so one in a lot is a signal (the shipped rule fires
  above 0).
* **Defect counts** per die follow the negative-binomial yield model as a
  gamma–Poisson mixture: λ ~ Gamma(α = 1.0, mean μ_type), n ~ Poisson(λ), so
  Var(n) = μ + μ²/α > μ (clustering). μ by type: optical 0.12, sem_review
  0.12, electrical_test 0.06, macro 0.06 detected defects per die (≈ 0.1:
  D0 ≈ 0.1/cm² on a 1 cm² die, a leading-node line). That keeps each
  defect type's daily chip share under 4 % (the shipped daily limit is
  5 %, scratch 2 %).
* **Wafer maps** in the WM-811K classes with their published shares (none
  85.2 %, edge-ring 5.6 %, edge-loc 3.0 %, center 2.5 %, loc 2.1 %, scratch
  0.7 %, random 0.5 %, donut 0.3 %, near-full 0.1 %). A pattern *moves*
  80 % of its wafer's expected defects onto its region (die mean ∝ its
  intensity f there: 1 on the ring, the scratch line, …) without adding
  any, so lots with more pattern wafers do not get more defects (a
  u-chart's Poisson limits stay honest); flat maps (random, near-full)
  add Poisson(0.3 | 0.6 · f) defects a die instead. Pattern defects show as
  the pattern's type (edge-ring → film_peel, center → residue, …), lie
  inside the die where f is high, and are mostly LOW/MEDIUM. On a wafer
  with a pattern 10 % of the inspected dies are review-sampled from the
  pattern region (as SEM review samples dies an optical scan flagged).
* **Quality score** = 0.935 − Σ penalty(severity) + N(0, 0.012), clipped
  to [0, 1], penalties LOW 0.012, MEDIUM 0.035, HIGH 0.10, CRITICAL 0.22:
  one HIGH defect (or three MEDIUM) fails a die (< 0.85).

Measured over seeds at 200 inspections a lot, clean lots have a mean score
of 0.931 (lot-to-lot sd 0.0015), pass rate 0.98, 0.10 defects per chip
(max ≈ 0.18) and no critical defect; lot defect counts are ≈ 1.2×
Poisson-dispersed. Locations are wafer coordinates in mm from the wafer
centre (x right, y up).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

WAFERS_PER_LOT = 25
WAFER_RADIUS_MM = 150.0
EDGE_EXCLUSION_MM = 3.0
DIE_SIZE_MM = 10.0

SEVERITIES = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
SEVERITY_PENALTY = {"LOW": 0.012, "MEDIUM": 0.035, "HIGH": 0.10, "CRITICAL": 0.22}
SCORE_BASE = 0.935
SCORE_NOISE_SD = 0.012
PASS_THRESHOLD = 0.85

#: Inspection type → (share of inspections, tools, mean detected defects per die, duration range s).
INSPECTION_TYPES: dict[str, tuple[float, tuple[str, ...], float, tuple[float, float]]] = {
    "optical": (0.45, ("OPT-01", "OPT-02", "OPT-03"), 0.12, (20.0, 90.0)),
    "electrical_test": (0.30, ("ET-01", "ET-02"), 0.06, (60.0, 300.0)),
    "sem_review": (0.15, ("SEM-01", "SEM-02"), 0.12, (120.0, 600.0)),
    "macro": (0.10, ("MAC-01",), 0.06, (10.0, 40.0)),
}
STATIONS = tuple(tool for _, tools, _, _ in INSPECTION_TYPES.values() for tool in tools)
NB_SHAPE = 1.0  # α of the negative-binomial yield model: smaller = more clustered

#: Base Pareto mix of defect types.
DEFECT_MIX: dict[str, float] = {
    "particle": 0.32,
    "residue": 0.21,
    "pattern_bridge": 0.12,
    "void": 0.09,
    "open": 0.07,
    "scratch": 0.05,
    "short": 0.05,
    "film_peel": 0.04,
    "crack": 0.03,
    "contamination": 0.02,
}
#: P(LOW, MEDIUM, HIGH, CRITICAL) per defect type on a healthy line: killer (CRITICAL) defects
#: come only from excursions, so one in a lot is a signal (the shipped rule fires above 0).
SEVERITY_MIX: dict[str, tuple[float, float, float, float]] = {
    "particle": (0.60, 0.30, 0.10, 0.0),
    "residue": (0.55, 0.35, 0.10, 0.0),
    "pattern_bridge": (0.30, 0.45, 0.25, 0.0),
    "void": (0.40, 0.40, 0.20, 0.0),
    "scratch": (0.25, 0.45, 0.30, 0.0),
    "open": (0.10, 0.40, 0.50, 0.0),
    "short": (0.10, 0.35, 0.55, 0.0),
    "film_peel": (0.40, 0.40, 0.20, 0.0),
    "crack": (0.10, 0.40, 0.50, 0.0),
    "contamination": (0.50, 0.40, 0.10, 0.0),
}
#: How strongly each inspection type sees each defect type (multiplies DEFECT_MIX; default 0.3).
_AFFINITY: dict[str, dict[str, float]] = {
    "optical": {"particle": 1.1, "residue": 1.2, "scratch": 1.6, "film_peel": 1.3, "contamination": 1.2, "open": 0.05},
    "electrical_test": {"open": 5.0, "short": 5.0, "void": 1.0, "pattern_bridge": 1.0, "particle": 0.2},
    "sem_review": {"pattern_bridge": 2.0, "void": 2.0, "particle": 1.0, "residue": 1.0, "crack": 1.5},
    "macro": {"scratch": 2.5, "crack": 2.0, "film_peel": 2.0, "contamination": 1.5, "particle": 0.5},
}


def _type_mix(inspection_type: str) -> tuple[list[str], list[float]]:
    affinity = _AFFINITY[inspection_type]
    names = list(DEFECT_MIX)
    weights = [DEFECT_MIX[name] * affinity.get(name, 0.3) for name in names]
    total = sum(weights)
    return names, [w / total for w in weights]


DEFECT_MIX_BY_TYPE = {name: _type_mix(name) for name in INSPECTION_TYPES}

# ------------------------------------------------------------------ wafer maps

#: WM-811K wafer-map classes and their shares among labelled maps.
WM811K_SHARES: dict[str, float] = {
    "none": 0.852,
    "edge-ring": 0.056,
    "edge-loc": 0.030,
    "center": 0.025,
    "loc": 0.021,
    "scratch": 0.007,
    "random": 0.005,
    "donut": 0.003,
    "near-full": 0.001,
}
#: The defect type a pattern's defects show as.
PATTERN_DEFECT_TYPE: dict[str, str] = {
    "none": "particle",
    "edge-ring": "film_peel",
    "edge-loc": "film_peel",
    "center": "residue",
    "loc": "particle",
    "scratch": "scratch",
    "random": "contamination",
    "donut": "residue",
    "near-full": "contamination",
}
#: Share of a pattern wafer's expected defects that the pattern moves onto its region.
PATTERN_FOCUS = 0.8
#: Patterns that add defects (per die, at intensity 1) rather than move them: flat maps have nowhere to move them.
ADDITIVE_PATTERNS: dict[str, float] = {"random": 0.3, "near-full": 0.6}
REVIEW_SAMPLE_SHARE = 0.10
#: Severity mix of pattern defects: mostly cosmetic.
PATTERN_SEVERITY = (0.60, 0.35, 0.05, 0.0)


def pattern_weights(wafer_map: WaferMap, dies: list[Die]) -> list[float] | None:
    """Per inspected die, the pattern's share of its expected defects, scaled so the wafer's total is unchanged.

    Die i's defect mean is μ · (1 − PATTERN_FOCUS + w_i) with w_i = PATTERN_FOCUS · f_i / mean(f):
    the pattern concentrates a wafer's defects where it is strong without adding any, so the
    lot-to-lot spread of defect counts stays close to Poisson (what a u-chart assumes).
    None when the pattern moves nothing (none, flat maps, no inspected die in its region).
    """
    if wafer_map.pattern in ("none", *ADDITIVE_PATTERNS):
        return None
    intensity = [wafer_map.intensity(d.x, d.y) for d in dies]
    mean = sum(intensity) / len(intensity) if intensity else 0.0
    if mean <= 0.0:
        return None
    return [PATTERN_FOCUS * f / mean for f in intensity]


@dataclass(frozen=True)
class Die:
    """One die site: grid column/row and its centre in wafer mm."""

    col: int
    row: int
    x: float
    y: float


def _die_grid() -> tuple[Die, ...]:
    usable = WAFER_RADIUS_MM - EDGE_EXCLUSION_MM
    half = int(WAFER_RADIUS_MM // DIE_SIZE_MM)
    dies = []
    for row in range(-half, half):
        for col in range(-half, half):
            x0, y0 = col * DIE_SIZE_MM, row * DIE_SIZE_MM
            corners = ((x0, y0), (x0 + DIE_SIZE_MM, y0), (x0, y0 + DIE_SIZE_MM), (x0 + DIE_SIZE_MM, y0 + DIE_SIZE_MM))
            if all(math.hypot(cx, cy) <= usable for cx, cy in corners):
                dies.append(Die(col + half, row + half, x0 + DIE_SIZE_MM / 2, y0 + DIE_SIZE_MM / 2))
    return tuple(dies)


DIE_GRID = _die_grid()


@dataclass(frozen=True)
class WaferMap:
    """A wafer's map pattern with its random geometry (angle, spot, scratch line)."""

    pattern: str
    angle: float = 0.0  # edge-loc direction (rad)
    spot: tuple[float, float] = (0.0, 0.0)  # loc centre (mm)
    line: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # scratch segment x1, y1, x2, y2 (mm)

    def intensity(self, x: float, y: float) -> float:
        """Pattern intensity in [0, 1] at wafer position (x, y) mm."""
        pattern = self.pattern
        if pattern == "none":
            return 0.0
        r = math.hypot(x, y)
        if pattern == "edge-ring":
            return 1.0 if r > 125.0 else 0.0
        if pattern == "edge-loc":
            off = abs((math.atan2(y, x) - self.angle + math.pi) % (2 * math.pi) - math.pi)
            return 1.0 if r > 105.0 and off < 0.6 else 0.0
        if pattern == "center":
            return math.exp(-((r / 40.0) ** 2))
        if pattern == "donut":
            return 1.0 if 55.0 < r < 95.0 else 0.0
        if pattern == "loc":
            return math.exp(-((math.hypot(x - self.spot[0], y - self.spot[1]) / 25.0) ** 2))
        if pattern == "scratch":
            return 1.0 if _segment_distance(x, y, self.line) < 6.0 else 0.0
        if pattern == "random":
            return 0.3
        return 0.9  # near-full


def _segment_distance(x: float, y: float, line: tuple[float, float, float, float]) -> float:
    x1, y1, x2, y2 = line
    dx, dy = x2 - x1, y2 - y1
    t = max(0.0, min(1.0, ((x - x1) * dx + (y - y1) * dy) / (dx * dx + dy * dy)))
    return math.hypot(x - x1 - t * dx, y - y1 - t * dy)


def draw_wafer_map(rng: random.Random, pattern: str | None = None) -> WaferMap:
    """A wafer map: ``pattern`` or one drawn with the WM-811K shares, with random geometry."""
    if pattern is None:
        pattern = rng.choices(list(WM811K_SHARES), weights=list(WM811K_SHARES.values()))[0]
    angle = rng.uniform(-math.pi, math.pi)
    spot_r, spot_a = rng.uniform(20.0, 100.0), rng.uniform(-math.pi, math.pi)
    # A handling scratch: a chord of 120-260 mm, somewhere across the wafer.
    length, mid_r, mid_a = rng.uniform(120.0, 260.0), rng.uniform(0.0, 60.0), rng.uniform(-math.pi, math.pi)
    mx, my = mid_r * math.cos(mid_a), mid_r * math.sin(mid_a)
    ux, uy = math.cos(angle + 1.3), math.sin(angle + 1.3)
    line = (mx - ux * length / 2, my - uy * length / 2, mx + ux * length / 2, my + uy * length / 2)
    return WaferMap(pattern, angle, (spot_r * math.cos(spot_a), spot_r * math.sin(spot_a)), line)


def location_in_die(rng: random.Random, die: Die, wafer_map: WaferMap | None = None) -> dict[str, float]:
    """A defect location inside ``die``; where the wafer's pattern is strong when a map is given."""
    half = DIE_SIZE_MM / 2
    x = y = 0.0
    for _ in range(6):
        x, y = die.x + rng.uniform(-half, half), die.y + rng.uniform(-half, half)
        if wafer_map is None or wafer_map.intensity(x, y) >= 0.5:
            break
    return {"x": round(x, 2), "y": round(y, 2)}


# ----------------------------------------------------------------- sampling


def poisson(rng: random.Random, lam: float) -> int:
    """Poisson(λ) by inversion (exact, deterministic for the RNG; λ here stays small)."""
    if lam <= 0.0:
        return 0
    if lam > 60.0:  # never in normal use; keeps the loop bounded
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    p = math.exp(-lam)
    cumulative, k, u = p, 0, rng.random()
    while u > cumulative:
        k += 1
        p *= lam / k
        cumulative += p
    return k


def negative_binomial(rng: random.Random, mean: float, shape: float = NB_SHAPE) -> int:
    """Gamma–Poisson draw: mean ``mean``, variance mean + mean²/shape."""
    if mean <= 0.0:
        return 0
    return poisson(rng, rng.gammavariate(shape, mean / shape))


def draw_severity(rng: random.Random, defect_type: str, mix: tuple[float, ...] | None = None) -> str:
    return rng.choices(SEVERITIES, weights=mix or SEVERITY_MIX[defect_type])[0]


def confidence(rng: random.Random) -> float:
    return round(min(0.999, max(0.5, rng.gauss(0.86, 0.07))), 3)


def quality_score(rng: random.Random, defects: list[dict[str, object]]) -> float:
    """The score of one inspection: falls with the number and severity of its defects."""
    penalty = sum(SEVERITY_PENALTY[str(d["severity"])] for d in defects)
    return round(min(1.0, max(0.0, SCORE_BASE - penalty + rng.gauss(0.0, SCORE_NOISE_SD))), 4)
