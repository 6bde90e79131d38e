"""The fab simulator: deterministic, realistic in shape, with excursions the lot rules can catch."""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
from collections import Counter, defaultdict
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chipq_pipelines.events import builders
from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.errors import DeserializationError
from chipq_pipelines.events.schemas import INSPECTION, load_schema
from chipq_pipelines.events.serialization import AvroSerializer, decode_event
from chipq_pipelines.simulate import MessShares, PoisonRecord, Simulation, SimulationConfig, fab, generate, write_truth
from chipq_pipelines.simulate.publish import default_start, summary_lines

ENCODER = AvroSerializer(load_schema(INSPECTION), config=KafkaConfig())


@pytest.fixture(scope="module")
def sim() -> Simulation:
    """A day-sized run: 80k events, 200 lots, every excursion kind."""
    return generate(80_000, seed=5)


def wire_bytes(simulation: Simulation) -> list[bytes]:
    """Every record as it would go on the wire (events encoded like the producer does)."""
    out = []
    for record in simulation.records:
        if isinstance(record, PoisonRecord):
            out.append(b"poison:" + record.value)
        else:
            out.append(ENCODER.serialize(builders.complete_inspection_event(record)))
    return out


def unique_completed(simulation: Simulation) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for event in simulation.events():
        if event["event_type"] == "INSPECTION_COMPLETED":
            seen[event["event_id"]] = event
    return list(seen.values())


# ------------------------------------------------------------- determinism


def test_same_seed_gives_a_byte_identical_stream_and_another_seed_does_not() -> None:
    first, again, other = generate(6000, seed=11), generate(6000, seed=11), generate(6000, seed=12)
    assert wire_bytes(first) == wire_bytes(again)
    assert first.truth_dict() == again.truth_dict()
    assert set(first.lots).isdisjoint(other.lots)  # two seeds never share lot ids
    assert {e["event_id"] for e in first.events()}.isdisjoint(e["event_id"] for e in other.events())


def test_every_event_passes_the_producers_validation(sim: Simulation) -> None:
    for event in list(sim.events())[:20_000]:
        ENCODER.check(builders.complete_inspection_event(event))


def test_sizes_follow_the_arguments() -> None:
    forced = generate(3001, seed=1, lots=7, start=datetime(2025, 3, 1, 12, tzinfo=UTC))
    assert len(forced.lots) == 7 and forced.counts.unique_events == 3000
    assert forced.first_event_time >= datetime(2025, 3, 1, 12, tzinfo=UTC)
    lots = Counter(lot for lot, _ in {(e["batch_id"], e["inspection_id"]) for e in forced.events()})
    assert sorted(lots.values()) == [214] * 5 + [215] * 2  # 1500 inspections spread evenly
    assert len(generate(40_000, seed=1).lots) == 100  # default: 25 wafers x 8 dies = 400 events a lot
    with pytest.raises(ValueError):
        generate(1, seed=1)
    with pytest.raises(ValueError):
        generate(100, seed=1, lots=0)


# ---------------------------------------------------------------- realism


def test_each_inspection_is_created_then_completed(sim: Simulation) -> None:
    by_inspection: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for event in sim.events():
        pair = by_inspection[event["inspection_id"]]
        previous = pair.setdefault(event["event_type"], event)
        assert previous["event_id"] == event["event_id"]  # a re-send is the same event, never a second one
    assert len(by_inspection) == sim.counts.unique_events // 2
    for pair in by_inspection.values():
        created, completed = pair["INSPECTION_CREATED"], pair["INSPECTION_COMPLETED"]
        assert created["event_time"] < completed["event_time"] <= created["event_time"] + timedelta(minutes=10)
        assert created["quality_score"] is None and created["defects"] == [] and created["status"] == "pending"
        assert 0.0 <= completed["quality_score"] <= 1.0 and completed["status"] == "completed"
        for field in ("batch_id", "wafer_id", "chip_id", "station_id", "inspection_type", "correlation_id"):
            assert created[field] == completed[field]
        assert completed["chip_id"].startswith(completed["wafer_id"]) and completed["wafer_id"].startswith(
            completed["batch_id"]
        )


def test_wafer_map_classes_have_the_wm811k_shares() -> None:
    rng = random.Random(3)
    n = 100_000
    drawn = Counter(fab.draw_wafer_map(rng).pattern for _ in range(n))
    for pattern, share in fab.WM811K_SHARES.items():
        tolerance = 4 * math.sqrt(share * (1 - share) / n) + 0.001
        assert abs(drawn[pattern] / n - share) < tolerance, pattern


def test_generated_wafers_carry_those_shares(sim: Simulation) -> None:
    counts = sim.truth.pattern_counts(sim.wafers)
    assert abs(counts["none"] / sim.wafers - 0.852) < 0.02
    assert abs(counts["edge-ring"] / sim.wafers - 0.056) < 0.012
    assert sum(counts.values()) == sim.wafers


def test_defect_locations_follow_the_wafer_pattern(sim: Simulation) -> None:
    radii: dict[str, list[float]] = defaultdict(list)
    for event in unique_completed(sim):
        pattern = sim.truth.wafer_patterns.get(event["wafer_id"], "none")
        for defect in event["defects"]:
            radii[pattern].append(math.hypot(defect["location"]["x"], defect["location"]["y"]))
    assert all(r <= fab.WAFER_RADIUS_MM for values in radii.values() for r in values)
    # Pattern wafers mix pattern and background defects; their mean radius still moves the pattern's way.
    assert statistics.fmean(radii["edge-ring"]) > statistics.fmean(radii["none"]) + 10
    assert statistics.fmean(radii["center"]) < statistics.fmean(radii["none"]) - 10


def test_defects_per_chip_are_overdispersed_like_the_negative_binomial_model(sim: Simulation) -> None:
    rng = random.Random(1)
    draws = [fab.negative_binomial(rng, 0.5) for _ in range(50_000)]
    mean, variance = statistics.fmean(draws), statistics.pvariance(draws)
    assert abs(mean - 0.5) < 0.02
    assert abs(variance - (0.5 + 0.5**2 / fab.NB_SHAPE)) < 0.06  # Poisson would give 0.5
    clean = set(sim.truth.clean_lots)
    counts = [len(e["defects"]) for e in unique_completed(sim) if e["batch_id"] in clean]
    assert statistics.pvariance(counts) > 1.1 * statistics.fmean(counts)  # ≈ 1.2 measured


def test_quality_scores_fall_with_defect_count_and_severity(sim: Simulation) -> None:
    by_count: dict[int, list[float]] = defaultdict(list)
    critical, only_low = [], []
    for event in unique_completed(sim):
        by_count[min(len(event["defects"]), 3)].append(event["quality_score"])
        severities = {d["severity"] for d in event["defects"]}
        if "CRITICAL" in severities:
            critical.append(event["quality_score"])
        elif severities == {"LOW"}:
            only_low.append(event["quality_score"])
    means = [statistics.fmean(by_count[k]) for k in range(4)]
    assert means == sorted(means, reverse=True) and means[0] - means[3] > 0.1
    assert max(critical) < 0.85 < statistics.fmean(only_low)


# ------------------------------------------------------------- excursions


def test_clean_lots_are_stable_and_comfortably_above_the_warning_limit(sim: Simulation) -> None:
    stats = sim.truth.lot_stats
    means = [stats[lot].mean_quality_score for lot in sim.truth.clean_lots]
    assert 0.915 < statistics.fmean(means) < 0.945
    assert statistics.stdev(means) < 0.01
    assert min(means) > 0.89
    assert set(sim.truth.clean_lots) | set(sim.truth.excursion_lots()) == set(sim.lots)
    assert set(sim.truth.clean_lots).isdisjoint(sim.truth.excursion_lots())


def test_excursions_are_strong_enough_for_lot_rules(sim: Simulation) -> None:
    truth, stats = sim.truth, sim.truth.lot_stats
    kinds = Counter(e.kind for e in truth.excursions)
    assert kinds["station_drift"] >= 4 and kinds["particle"] >= 2 and kinds["scratch"] >= 1
    base_mean, base_sd = truth.baseline["mean_quality_score"], truth.baseline["mean_quality_score_sd"]
    clean_density = truth.baseline["defect_density"]
    assert max(stats[lot].critical_defects for lot in truth.clean_lots) == 0  # killer defects mean excursions
    assert all(lot not in truth.excursion_lots() for lot in sim.lots[:30])  # the SPC baseline stays clean
    for excursion in truth.excursions:
        lot = stats[excursion.lot_id]
        assert "spc_*" in excursion.expected_rules
        assert lot.mean_quality_score < base_mean - 6 * base_sd or lot.defect_density > 2 * clean_density
        if "lot_mean_score" in excursion.expected_rules:
            assert lot.mean_quality_score < 0.85
        if excursion.kind == "particle":
            assert lot.defect_density > 3 * clean_density and "lot_defect_density" in excursion.expected_rules
        if excursion.kind == "scratch":
            assert lot.critical_defects >= 20 and "lot_critical_defects" in excursion.expected_rules
    drift = [e for e in truth.excursions if e.kind == "station_drift"]
    assert len({e.station_id for e in drift}) == 1
    drift_means = [stats[e.lot_id].mean_quality_score for e in drift]
    assert drift_means[0] > 0.85 > drift_means[-1]  # progressive: SPC first, then the score limit
    assert drift_means[-1] < 0.70 and drift[-1].expected_alert_level == "CRITICAL"
    assert all(later < earlier + 0.02 for earlier, later in itertools.pairwise(drift_means))


def test_the_shipped_lot_rules_flag_every_excursion_and_no_clean_lot(sim: Simulation) -> None:
    from chipq_pipelines.rules.evaluate import evaluate_lot
    from chipq_pipelines.rules.loader import load_rules

    rules = load_rules()
    fired = {
        lot: {v.rule for v in evaluate_lot(rules, {"lot_id": lot, **asdict(stats)})}
        for lot, stats in sim.truth.lot_stats.items()
    }
    assert not any(fired[lot] for lot in sim.truth.clean_lots)
    for excursion in sim.truth.excursions:
        assert fired[excursion.lot_id] == {r for r in excursion.expected_rules if not r.startswith("spc_")}
        assert fired[excursion.lot_id], excursion


def test_small_runs_have_no_excursions_unless_asked() -> None:
    assert generate(4000, seed=2).truth.excursions == []
    asked = generate(8000, seed=2, config=SimulationConfig(particle_lots=2, drift_episodes=0, scratch_lots=0))
    assert [e.kind for e in asked.truth.excursions] == ["particle", "particle"]


# ------------------------------------------------------------------ mess


def test_mess_shares_are_near_the_configured_ones(sim: Simulation) -> None:
    unique = sim.counts.unique_events
    assert abs(sim.counts.duplicates / unique - 0.01) < 0.002
    assert abs(sim.counts.out_of_order / unique - 0.02) < 0.003
    assert abs(sim.counts.late / unique - 0.005) < 0.0015
    assert sim.counts.poison_total == round(0.001 * unique) == len(sim.poison())
    resent = Counter(e["event_id"] for e in sim.events())
    assert sum(n - 1 for n in resent.values()) == sim.counts.duplicates
    # Late events: their event_time lies at least an hour before something already published.
    latest = sim.first_event_time
    late = backwards = 0
    for event in sim.events():
        late += event["event_time"] <= latest - timedelta(hours=1)
        backwards += event["event_time"] < latest
        latest = max(latest, event["event_time"])
    assert late >= 0.8 * sim.counts.late
    assert backwards >= sim.counts.out_of_order


def test_mess_shares_are_configurable() -> None:
    shares = MessShares(duplicate_share=0.05, out_of_order_share=0.0, late_share=0.0, poison_share=0.01)
    messy = generate(20_000, seed=4, config=SimulationConfig(mess=shares))
    assert abs(messy.counts.duplicates / 20_000 - 0.05) < 0.006
    assert messy.counts.out_of_order == messy.counts.late == 0
    assert messy.counts.poison_total == 200
    clean = generate(2000, seed=4, config=SimulationConfig(mess=MessShares(0, 0, 0, 0)))
    assert len(clean.records) == 2000 and not clean.poison()
    latest = clean.first_event_time
    for event in clean.events():  # only network jitter (≤ 2 s) reorders the stream
        assert event["event_time"] >= latest - timedelta(seconds=2)
        latest = max(latest, event["event_time"])
    with pytest.raises(ValueError):
        MessShares(poison_share=0.9)


def test_poison_records_never_decode(sim: Simulation) -> None:
    poison = sim.poison()
    assert Counter(p.kind for p in poison).keys() == {"garbage", "wrong_magic", "truncated", "unknown_fingerprint"}
    for record in poison:
        with pytest.raises(DeserializationError):
            decode_event(record.value, KafkaConfig())
        assert record.key.startswith("INS-")


# ------------------------------------------------------------ truth, CLI


def test_truth_file_names_lots_kinds_and_rules(sim: Simulation, tmp_path: Path) -> None:
    path = write_truth(sim, tmp_path / "out" / "truth.json")
    truth = json.loads(path.read_text())
    assert truth["seed"] == 5 and truth["lots"] == sim.lots
    assert {e["lot_id"] for e in truth["excursions"]} == set(sim.truth.excursion_lots())
    assert all({"lot_id", "kind", "expected_rules"} <= e.keys() for e in truth["excursions"])
    assert len(truth["clean_lots"]) + len(truth["excursions"]) == len(sim.lots)
    assert truth["stream"]["duplicates"] == sim.counts.duplicates
    assert not list(path.parent.glob("*.partial"))


def test_default_start_ends_the_run_before_the_next_hour() -> None:
    start = default_start(100_000)
    span = generate(2000, seed=1, lots=250, start=start)  # same lot count, same clock span
    assert span.last_event_time <= datetime.now(UTC) + timedelta(hours=1)
    assert start.minute == start.second == 0


def test_summary_lines_mention_the_counts(sim: Simulation) -> None:
    from chipq_pipelines.simulate.publish import PublishReport

    report = PublishReport(
        topic="t",
        events_published=sim.counts.events,
        unique_events=sim.counts.unique_events,
        duplicates=sim.counts.duplicates,
        out_of_order=sim.counts.out_of_order,
        late=sim.counts.late,
        poison=sim.counts.poison_total,
        lots=len(sim.lots),
        excursion_lots=len(sim.truth.excursions),
        days_spanned=sim.days_spanned,
        first_event_time=sim.first_event_time,
        last_event_time=sim.last_event_time,
        seconds=2.0,
        poison_by_kind=sim.counts.poison,
    )
    text = "\n".join(summary_lines(sim, report))
    assert f"{sim.counts.duplicates:,} duplicates" in text and "station_drift" in text and "lots     200" in text
