"""Detection of injected excursions by the shipped rules (fixed and SPC), against the simulator's truth.

    .venv/bin/python benchmarks/detection_bench.py --lots 1000 --seed 0
    .venv/bin/python benchmarks/detection_bench.py --lots 1000 --seed 1 --seed 2

No Kafka: ``chipq_pipelines.simulate.generate`` builds the stream (400 events a
lot), lot rows are computed from it with the semantics of
``marts.lot_quality_scores`` (each inspection's latest INSPECTION_COMPLETED
event, duplicates collapse), written to an in-memory DuckDB warehouse, and
``alerts.outbox.evaluate_into_outbox`` evaluates the shipped rules on them
exactly as the alerts asset does (fixed lot rules, the frozen SPC baseline,
Western Electric rules in lot time order, u- and p-charts). Only lot rules are
scored here; the daily defect-rate rules are not part of the truth file.

Printed per seed and summed: excursion lots caught / total by kind, and false
alarms (clean lots with at least one alert) per 1,000 clean lots, by rule, for
the fixed rules, for SPC, and for both together. Clean lots that formed the SPC
baseline count like any other clean lot.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import duckdb
import pandas as pd

from chipq_pipelines.alerts.outbox import evaluate_into_outbox
from chipq_pipelines.rules.loader import RuleSet, load_rules
from chipq_pipelines.simulate import Simulation, generate
from chipq_pipelines.simulate.excursions import PASS_THRESHOLD
from chipq_pipelines.warehouse.schema import ensure_schema

EVENTS_PER_LOT = 400
FIXED, SPC, ALL = "fixed rules", "SPC (spc_*)", "fixed + SPC"


def lot_rows(simulation: Simulation, pass_threshold: float = PASS_THRESHOLD) -> list[dict[str, Any]]:
    """``marts.lot_quality_scores`` rows: the latest completed event of each inspection, per lot."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for event in simulation.events():
        if event["event_type"] != "INSPECTION_COMPLETED":
            continue
        key = (event["batch_id"], event["inspection_id"])
        held = latest.get(key)
        if held is None or (event["event_time"], event["event_id"]) > (held["event_time"], held["event_id"]):
            latest[key] = event
    lots: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (lot_id, _), event in latest.items():
        lots[lot_id].append(event)
    now = dt.datetime.now(dt.UTC)
    rows = []
    for lot_id, events in lots.items():
        scores = [e["quality_score"] for e in events if e["quality_score"] is not None]
        chips = len({e["chip_id"] for e in events})
        defects = sum(len(e["defects"]) for e in events)
        rows.append(
            {
                "lot_id": lot_id,
                "inspections_completed": len(events),
                "chips_inspected": chips,
                "mean_quality_score": sum(scores) / len(scores) if scores else None,
                "min_quality_score": min(scores) if scores else None,
                "pass_rate": sum(1 for s in scores if s >= pass_threshold) / len(events),
                "pass_threshold": pass_threshold,
                "unscored_inspections": len(events) - len(scores),
                "defect_count": defects,
                "defect_density": defects / chips,
                "critical_defects": sum(1 for e in events for d in e["defects"] if d["severity"] == "CRITICAL"),
                "first_event_time": min(e["event_time"] for e in events),
                "last_event_time": max(e["event_time"] for e in events),
                "updated_at": now,
            }
        )
    return rows


def alerts_by_lot(rows: list[dict[str, Any]], rules: RuleSet) -> tuple[dict[str, set[str]], str]:
    """Run the outbox evaluation on the rows; the rules fired per lot and the baseline's status."""
    conn = duckdb.connect()
    conn.execute("SET TimeZone = 'UTC'")
    ensure_schema(conn)
    frame = pd.DataFrame(rows)  # noqa: F841 (read by DuckDB's replacement scan)
    conn.execute("INSERT INTO marts.lot_quality_scores BY NAME SELECT * FROM frame")
    evaluation = evaluate_into_outbox(conn, rules)
    fired: dict[str, set[str]] = defaultdict(set)
    for violation in evaluation.new_violations:
        if violation.scope == "LOT":
            fired[str(violation.lot_id)].add(violation.rule)
    conn.close()
    return fired, evaluation.baseline_status


@dataclass
class Tally:
    """Counts over one or more seeds."""

    lots: int = 0
    clean: int = 0
    excursions: Counter = field(default_factory=Counter)  # kind -> lots
    caught: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # family -> kind -> lots
    false_alarms: Counter = field(default_factory=Counter)  # family -> clean lots alerted
    false_by_rule: Counter = field(default_factory=Counter)  # rule -> clean lots alerted
    missed: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.lots += other.lots
        self.clean += other.clean
        self.excursions.update(other.excursions)
        for family, kinds in other.caught.items():
            self.caught[family].update(kinds)
        self.false_alarms.update(other.false_alarms)
        self.false_by_rule.update(other.false_by_rule)
        self.missed += other.missed


def families(rules: Iterable[str]) -> dict[str, bool]:
    rules = set(rules)
    spc = any(r.startswith("spc_") for r in rules)
    fixed = any(not r.startswith("spc_") for r in rules)
    return {FIXED: fixed, SPC: spc, ALL: fixed or spc}


def score(simulation: Simulation, fired: dict[str, set[str]]) -> Tally:
    truth = simulation.truth
    tally = Tally(lots=len(simulation.lots), clean=len(truth.clean_lots))
    for excursion in truth.excursions:
        tally.excursions[excursion.kind] += 1
        hit = families(fired.get(excursion.lot_id, ()))
        for family, caught in hit.items():
            tally.caught[family][excursion.kind] += caught
        if not hit[ALL]:
            tally.missed.append(f"{excursion.lot_id} ({excursion.kind}, {excursion.detail})")
    for lot in truth.clean_lots:
        rules = fired.get(lot, set())
        for family, alerted in families(rules).items():
            tally.false_alarms[family] += alerted
        tally.false_by_rule.update(rules)
    return tally


def report(title: str, tally: Tally) -> list[str]:
    total = sum(tally.excursions.values())
    kinds = sorted(tally.excursions)
    lines = [f"== {title}: {tally.lots:,} lots, {total} excursion lots, {tally.clean:,} clean lots"]
    kind_cells = "".join(f"{k:>16}" for k in kinds)
    lines.append(f"{'':14}{'caught':>14}{kind_cells}{'false alarms':>16}{'per 1,000 clean':>17}")
    for family in (FIXED, SPC, ALL):
        caught = tally.caught[family]
        cells = "".join(f"{f'{caught[k]}/{tally.excursions[k]}':>16}" for k in kinds)
        alarms = tally.false_alarms[family]
        rate = 1000 * alarms / tally.clean if tally.clean else 0.0
        share = f"{sum(caught.values())}/{total}"
        lines.append(f"{family:14}{share:>14}{cells}{alarms:>16}{rate:>17.2f}")
    if tally.false_by_rule:
        by_rule = ", ".join(
            f"{rule} {n} ({1000 * n / tally.clean:.2f}/1,000)" for rule, n in sorted(tally.false_by_rule.items())
        )
        lines.append(f"false alarms by rule: {by_rule}")
    else:
        lines.append("false alarms by rule: none")
    lines += [f"MISSED {m}" for m in tally.missed]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lots", type=int, default=1000, help="lots per simulated run (400 events each)")
    parser.add_argument("--seed", type=int, action="append", help="seed (repeat for several runs; default 0)")
    parser.add_argument("--rules", help="rules file (default: $CHIPQ_RULES or the shipped rules.yaml)")
    args = parser.parse_args(argv)
    rules = load_rules(args.rules)
    seeds = args.seed or [0]
    print(f"rules {rules.source} version {rules.version}; {args.lots:,} lots a run, seeds {seeds}")
    total = Tally()
    for seed in seeds:
        started = time.perf_counter()
        simulation = generate(args.lots * EVENTS_PER_LOT, seed=seed)
        rows = lot_rows(simulation)
        fired, baseline = alerts_by_lot(rows, rules)
        tally = score(simulation, fired)
        total.add(tally)
        print(f"\nseed {seed} ({time.perf_counter() - started:.0f} s); SPC baseline {baseline}")
        print("\n".join(report(f"seed {seed}", tally)))
    if len(seeds) > 1:
        print()
        print("\n".join(report(f"all {len(seeds)} seeds", total)))
    return 1 if total.missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
