"""``generate``: a deterministic, realistic stream of inspection events (no Kafka).

A run of ``events`` events is ``events // 2`` inspections, each emitting
INSPECTION_CREATED and, 10 s–10 min later (by inspection type),
INSPECTION_COMPLETED. Inspections are spread evenly over the lots, and over
the 25 wafers of each lot; without ``lots`` a lot gets 25 × 8 = 200
inspections (400 events), so 100k events are ≈ 250 lots. A lot starts every
6 min (≈ 240 lots a day) and its wafers pass every 4 min, so lots overlap
and their events interleave; 100k events span about a day.

Ids: lots ``LOT-<tag>-00001`` (``tag``: 4 hex digits from the seed, so two
seeds never share lot ids), wafers ``<lot>-W01``, chips ``<wafer>-X12Y07``
(die column/row), inspections ``INS-<tag>-0000001``. Event ids and
correlation ids are UUIDs drawn from the seeded RNG: the same seed and
start give a byte-identical stream. Duplicates and poison records come on
top of ``events`` (see ``stream``).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from chipq_pipelines.gc_pause import cyclic_gc_paused
from chipq_pipelines.simulate import fab
from chipq_pipelines.simulate.excursions import (
    DRIFT_DEFECT_TYPE,
    DRIFT_SEVERITY,
    PARTICLE,
    PARTICLE_FACTOR,
    PARTICLE_SEVERITY,
    SCRATCH,
    SCRATCH_EXCURSION_DEFECTS,
    SCRATCH_REVIEW_SHARE,
    SCRATCH_SEVERITY,
    STATION_DRIFT,
    GroundTruth,
    LotPlan,
    ground_truth,
    lot_stats,
    plan_excursions,
)
from chipq_pipelines.simulate.stream import MessShares, PoisonRecord, Record, StreamCounts, messy_stream

DEFAULT_START = datetime(2025, 1, 6, tzinfo=UTC)
DRIFT_TYPE = "optical"
_TYPES = list(fab.INSPECTION_TYPES)
_TYPE_WEIGHTS = [spec[0] for spec in fab.INSPECTION_TYPES.values()]
_TYPE_CODE = {"optical": "OPT", "electrical_test": "ET", "sem_review": "SEM", "macro": "MAC"}
_OPERATORS = tuple(f"op-{n:03d}" for n in (101, 114, 127, 203, 219, 305))


@dataclass(frozen=True)
class SimulationConfig:
    """Knobs of a run; the defaults are the documented realistic line."""

    chips_per_wafer: int = 8  # inspected dies per wafer when ``lots`` is not given
    lot_interval_s: float = 360.0
    wafer_pitch_s: float = 240.0
    mess: MessShares = field(default_factory=MessShares)
    baseline_lots: int = 30
    drift_episodes: int | None = None  # None: one per 300 lots (≥ 1 from 12 lots on)
    drift_lots: int = 6
    particle_lots: int | None = None  # None: 1.5 % of lots (≥ 1 from 12 lots on)
    scratch_lots: int | None = None  # None: 0.5 % of lots (≥ 1 from 12 lots on)

    def excursion_counts(self, lots: int) -> tuple[int, int, int]:
        """(drift episodes, particle lots, scratch lots) for a run of ``lots`` lots."""
        auto = lots >= 12

        def pick(value: int | None, default: int) -> int:
            return value if value is not None else (default if auto else 0)

        return (
            pick(self.drift_episodes, max(1, lots // 300)),
            pick(self.particle_lots, max(1, round(lots * 0.015))),
            pick(self.scratch_lots, max(1, round(lots * 0.005))),
        )


@dataclass
class Simulation:
    """A generated run: the records in publish order, what was injected, and the ground truth."""

    seed: int
    start: datetime
    config: SimulationConfig
    records: list[Record]
    counts: StreamCounts
    truth: GroundTruth
    lots: list[str]
    wafers: int
    first_event_time: datetime
    last_event_time: datetime

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def events(self) -> Iterator[dict[str, Any]]:
        """The valid events in publish order (duplicates included)."""
        return (r for r in self.records if not isinstance(r, PoisonRecord))

    def poison(self) -> list[PoisonRecord]:
        return [r for r in self.records if isinstance(r, PoisonRecord)]

    @property
    def days_spanned(self) -> int:
        """UTC days the events' times touch."""
        return (self.last_event_time.date() - self.first_event_time.date()).days + 1

    def truth_dict(self) -> dict[str, Any]:
        """The ground truth as written to ``--truth``."""
        return {
            "generator": "chipq simulate v1",
            "seed": self.seed,
            "start": self.start.isoformat(),
            "first_event_time": self.first_event_time.isoformat(),
            "last_event_time": self.last_event_time.isoformat(),
            "lots": self.lots,
            "wafers": self.wafers,
            "stream": {
                "events": self.counts.events,
                "unique_events": self.counts.unique_events,
                "duplicates": self.counts.duplicates,
                "out_of_order": self.counts.out_of_order,
                "late": self.counts.late,
                "poison": self.counts.poison,
            },
            "wafer_pattern_counts": self.truth.pattern_counts(self.wafers),
            **self.truth.to_dict(),
        }


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def generate(
    events: int,
    seed: int = 0,
    lots: int | None = None,
    start: datetime | None = None,
    config: SimulationConfig | None = None,
) -> Simulation:
    """Generate ``events`` inspection events (rounded down to even) for ``seed``, in publish order.

    ``lots`` defaults to one per 400 events; ``start`` (naive = UTC) to 2025-01-06.
    The same arguments always give the same records, byte for byte.
    """
    with cyclic_gc_paused():  # millions of small dicts and no cycles
        return _generate(events, seed, lots, start, config)


def _generate(
    events: int, seed: int, lots: int | None, start: datetime | None, config: SimulationConfig | None
) -> Simulation:
    config = config or SimulationConfig()
    if events < 2:
        raise ValueError(f"events must be at least 2 (one created/completed pair), got {events}")
    if lots is not None and lots < 1:
        raise ValueError(f"lots must be at least 1, got {lots}")
    start = start or DEFAULT_START
    start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
    start = start.replace(microsecond=start.microsecond // 1000 * 1000)
    rng = random.Random(seed)
    tag = f"{rng.getrandbits(16):04X}"
    inspections = events // 2
    n_lots = lots or max(1, round(inspections / (fab.WAFERS_PER_LOT * config.chips_per_wafer)))
    plans = []
    for seq, count in enumerate(_split(inspections, n_lots)):
        route = {name: rng.choice(spec[1]) for name, spec in fab.INSPECTION_TYPES.items()}
        start_ms = round((seq * config.lot_interval_s + rng.uniform(0, 60)) * 1000)
        plans.append(LotPlan(seq, f"LOT-{tag}-{seq + 1:05d}", start_ms, route, count))
    episodes, particles, scratches = config.excursion_counts(n_lots)
    plan_excursions(
        rng,
        plans,
        fab.INSPECTION_TYPES[DRIFT_TYPE][1],
        drift_type=DRIFT_TYPE,
        baseline_lots=config.baseline_lots,
        drift_episodes=episodes,
        drift_lots=config.drift_lots,
        particle_lots=particles,
        scratch_lots=scratches,
    )
    builder = _LotBuilder(rng, tag, config)
    for plan in plans:
        builder.build(plan)
    timed = sorted(builder.timed, key=lambda item: (item[0], item[1]))
    for at_ms, _, event in timed:
        event["event_time"] = start + timedelta(milliseconds=at_ms)
    records, counts = messy_stream(rng, [(at, event) for at, _, event in timed], config.mess)
    completed = [e for _, _, e in timed if e["event_type"] == "INSPECTION_COMPLETED"]
    truth = ground_truth(plans, lot_stats(completed), builder.wafer_patterns)
    return Simulation(
        seed=seed,
        start=start,
        config=config,
        records=records,
        counts=counts,
        truth=truth,
        lots=[plan.lot_id for plan in plans],
        wafers=builder.wafers,
        first_event_time=start + timedelta(milliseconds=timed[0][0]),
        last_event_time=start + timedelta(milliseconds=timed[-1][0]),
    )


class _LotBuilder:
    """Builds the inspections of each lot into (event_time ms, seq, event) entries."""

    def __init__(self, rng: random.Random, tag: str, config: SimulationConfig) -> None:
        self.rng = rng
        self.tag = tag
        self.config = config
        self.timed: list[tuple[int, int, dict[str, Any]]] = []
        self.wafer_patterns: dict[str, str] = {}
        self.wafers = 0
        self._inspection_seq = 0

    def build(self, lot: LotPlan) -> None:
        rng = self.rng
        for slot, count in enumerate(_split(lot.inspections, fab.WAFERS_PER_LOT), start=1):
            if count == 0:
                continue
            self.wafers += 1
            wafer_id = f"{lot.lot_id}-W{slot:02d}"
            wafer_map = fab.draw_wafer_map(rng, "scratch" if lot.kind == SCRATCH else None)
            if wafer_map.pattern != "none":
                self.wafer_patterns[wafer_id] = wafer_map.pattern
            wafer_ms = lot.start_ms + round(((slot - 1) * self.config.wafer_pitch_s) * 1000)
            dies = self._sample_dies(wafer_map, count, lot.kind)
            weights = fab.pattern_weights(wafer_map, dies)
            for index, die in enumerate(dies):
                weight = None if weights is None else weights[index]
                self._inspection(lot, wafer_id, wafer_map, die, weight, wafer_ms)

    def _sample_dies(self, wafer_map: fab.WaferMap, count: int, kind: str) -> list[fab.Die]:
        rng = self.rng
        count = min(count, len(fab.DIE_GRID))
        if wafer_map.pattern == "none":
            return rng.sample(fab.DIE_GRID, count)
        share = SCRATCH_REVIEW_SHARE if kind == SCRATCH else fab.REVIEW_SAMPLE_SHARE
        hot = [i for i, die in enumerate(fab.DIE_GRID) if wafer_map.intensity(die.x, die.y) >= 0.5]
        reviewed = rng.sample(hot, min(len(hot), round(count * share)))
        taken = set(reviewed)
        rest = [i for i in range(len(fab.DIE_GRID)) if i not in taken]
        return [fab.DIE_GRID[i] for i in reviewed + rng.sample(rest, count - len(reviewed))]

    def _inspection(
        self,
        lot: LotPlan,
        wafer_id: str,
        wafer_map: fab.WaferMap,
        die: fab.Die,
        pattern_weight: float | None,
        wafer_ms: int,
    ) -> None:
        rng = self.rng
        inspection_type = rng.choices(_TYPES, weights=_TYPE_WEIGHTS)[0]
        _, _, mean_defects, (low_s, high_s) = fab.INSPECTION_TYPES[inspection_type]
        station = lot.route[inspection_type]
        names, weights = fab.DEFECT_MIX_BY_TYPE[inspection_type]
        pattern = wafer_map.pattern
        pattern_type = fab.PATTERN_DEFECT_TYPE[pattern]
        if lot.kind == SCRATCH:
            pattern_mix: tuple[float, ...] | None = SCRATCH_SEVERITY
        else:
            pattern_mix = None if pattern == "scratch" else fab.PATTERN_SEVERITY
        # A pattern moves the wafer's defects onto its region: this die's mean is scaled, and a
        # share of its defects (the pattern's) shows as the pattern's type where it is strong.
        scale = 1.0 if pattern_weight is None else 1.0 - fab.PATTERN_FOCUS + pattern_weight
        pattern_share = 0.0 if pattern_weight is None else pattern_weight / scale
        defects = []
        for _ in range(fab.negative_binomial(rng, mean_defects * scale)):
            if pattern_share and rng.random() < pattern_share:
                severity = fab.draw_severity(rng, pattern_type, pattern_mix)
                defects.append(self._defect(pattern_type, severity, die, wafer_map))
            else:
                defect_type = rng.choices(names, weights=weights)[0]
                defects.append(self._defect(defect_type, fab.draw_severity(rng, defect_type), die))
        added = SCRATCH_EXCURSION_DEFECTS if lot.kind == SCRATCH else fab.ADDITIVE_PATTERNS.get(pattern, 0.0)
        for _ in range(fab.poisson(rng, added * wafer_map.intensity(die.x, die.y))):
            severity = fab.draw_severity(rng, pattern_type, pattern_mix)
            defects.append(self._defect(pattern_type, severity, die, wafer_map))
        if lot.kind == PARTICLE:
            for _ in range(fab.negative_binomial(rng, mean_defects * (PARTICLE_FACTOR - 1))):
                defects.append(self._defect("particle", fab.draw_severity(rng, "particle", PARTICLE_SEVERITY), die))
        if lot.kind == STATION_DRIFT and station == lot.drift_station:
            for _ in range(fab.poisson(rng, lot.drift_level)):
                severity = fab.draw_severity(rng, DRIFT_DEFECT_TYPE, DRIFT_SEVERITY)
                defects.append(self._defect(DRIFT_DEFECT_TYPE, severity, die))
        score = fab.quality_score(rng, defects)

        self._inspection_seq += 1
        inspection_id = f"INS-{self.tag}-{self._inspection_seq:07d}"
        created_ms = wafer_ms + rng.randint(0, round(self.config.wafer_pitch_s * 1000))
        duration_ms = round(rng.uniform(low_s, high_s) * 1000)
        common = {
            "correlation_id": _uuid(rng),
            "inspection_id": inspection_id,
            "batch_id": lot.lot_id,
            "chip_id": f"{wafer_id}-X{die.col:02d}Y{die.row:02d}",
            "wafer_id": wafer_id,
            "station_id": station,
            "inspection_type": inspection_type,
            "recipe_id": f"RCP-{_TYPE_CODE[inspection_type]}-{1 + lot.seq % 3}",
        }
        created: dict[str, Any] = {
            "event_id": _uuid(rng),
            "event_type": "INSPECTION_CREATED",
            "event_time": created_ms,
            **common,
            "status": "pending",
            "quality_score": None,
            "defects": [],
            "metadata": {"station": station, "created_by": rng.choice(_OPERATORS)},
        }
        completed = {
            "event_id": _uuid(rng),
            "event_type": "INSPECTION_COMPLETED",
            "event_time": created_ms + duration_ms,
            **common,
            "status": "completed",
            "quality_score": score,
            "defects": defects,
            "metadata": {"processing_time_ms": str(duration_ms), "die_x": str(die.col), "die_y": str(die.row)},
        }
        self.timed.append((created_ms, len(self.timed), created))
        self.timed.append((created_ms + duration_ms, len(self.timed), completed))

    def _defect(
        self, defect_type: str, severity: str, die: fab.Die, wafer_map: fab.WaferMap | None = None
    ) -> dict[str, Any]:
        return {
            "defect_type": defect_type,
            "severity": severity,
            "confidence": fab.confidence(self.rng),
            "location": fab.location_in_die(self.rng, die, wafer_map),
        }
