"""Per-cycle work is bounded by what changed: alerts and checks read the changed lots and days, not history.

Evaluating after a small change must find exactly what a fresh warehouse evaluated in
one go finds, while reading only the changed lots, their SPC neighbours and the
baseline's own lots; the data-quality checks read only the rows of the lots and days
they were given, or of the recent window.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import duckdb
import pytest

from chipq_pipelines.alerts.outbox import changed_partitions, evaluate_into_outbox
from chipq_pipelines.checks import flow
from chipq_pipelines.checks.quality import (
    defect_rate_counts,
    freshness,
    lot_quality_counts,
    lot_scope,
    mart_quality_problems,
)
from chipq_pipelines.rules.loader import load_rules
from chipq_pipelines.rules.spc import LOOKBACK
from chipq_pipelines.warehouse import connect, ensure_schema, land_batch
from chipq_pipelines.warehouse.marts import rewrite_days, rewrite_lots
from chipq_pipelines.warehouse.samples import INSPECTION_TOPIC, at, defect, inspection_event

T0 = dt.datetime(2025, 3, 10, 8, 0, tzinfo=dt.UTC)
CHIPS = 20
WE2 = "spc_we2_2of3_beyond_2sigma"


class Fab:
    """Lots of one completed inspection per chip, landed on partition 0 of the inspection topic."""

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn = conn
        self.offset = 0
        self.day_rows: dict[dt.date, int] = {}

    def lot_events(
        self,
        index: int,
        score: float,
        *,
        start: dt.datetime = T0,
        particles: int = 0,
        centers: int | None = None,
        tag: str = "",
    ) -> list[dict[str, Any]]:
        """Lot ``L{index}`` two hours after the previous one; ``particles`` chips carry a particle, the
        first chip ``centers`` center defects (0 and 4 in turn: over-dispersed, Laney's sigma_z is 2.5)."""
        lot_id = f"L{index:03d}"
        first = start + dt.timedelta(hours=2 * index)
        centers = 4 * (index % 2) if centers is None else centers
        return [
            inspection_event(
                event_id=str(uuid.uuid4()),
                event_time=first + dt.timedelta(seconds=chip + (60 if tag else 0)),
                inspection_id=f"{lot_id}/I{chip}{tag}",
                batch_id=lot_id,
                chip_id=f"{lot_id}/C{chip}{tag}",
                quality_score=score,
                defects=[defect("particle")] * (chip < particles) + [defect("center")] * centers * (chip == 0),
                metadata={},
            )
            for chip in range(CHIPS)
        ]

    def land(self, events: list[dict[str, Any]]) -> None:
        """Land the events, then rewrite their lots and days (what the mart runs do)."""
        records = [(event, at(0, self.offset + n)) for n, event in enumerate(events)]
        land_batch(
            self.conn,
            topic=INSPECTION_TOPIC,
            offset_ranges={0: (self.offset, self.offset + len(events))},
            inspection_events=records,
        )
        self.offset += len(events)
        for event in events:
            day = event["event_time"].date()
            self.day_rows[day] = self.day_rows.get(day, 0) + 1
        rewrite_lots(self.conn, {e["batch_id"] for e in events})
        rewrite_days(self.conn, {e["event_time"].date() for e in events})


def baseline_score(index: int) -> float:
    """In control: 0.95 +- 0.004 (the baseline's sigma is the floor, 0.005: the 2-sigma zone is below 0.94)."""
    return 0.95 + 0.002 * ((index % 5) - 2)


#: The history: in control, but for a lot far below the limits, a lot with many particles (45),
#: a WE2 pair (50, 51), and lots 48, 58 and 59 just below mu - 2 sigma.
HISTORY = {40: 0.80, 48: 0.938, 50: 0.937, 51: 0.937, 58: 0.938, 59: 0.937}
#: The change: three new lots (60 continues the run of 58 and 59 below 2 sigma) and a bad one,
#: plus late inspections that pull old lot 47 below 2 sigma: 48, far from the new lots, is
#: re-judged because its window now holds a changed lot.
NEW = {60: 0.937, 61: 0.95, 62: 0.952, 63: 0.80}
#: 62 has 9 defects on 20 chips: above the plain Poisson UCL (7), within the over-dispersed one.


def history(fab: Fab, lots: int = 60) -> list[dict[str, Any]]:
    return [
        event
        for index in range(lots)
        for event in fab.lot_events(index, HISTORY.get(index, baseline_score(index)), particles=15 * (index == 45))
    ]


def change(fab: Fab) -> list[dict[str, Any]]:
    new = [event for index, score in NEW.items() for event in fab.lot_events(index, score, centers=9 * (index == 62))]
    late = fab.lot_events(47, 0.924, tag="-late")  # mean of lot 47: (0.95 + 0.924) / 2 = 0.937
    return new + late


def outbox(conn: duckdb.DuckDBPyConnection) -> set[tuple[Any, ...]]:
    """The facts in the outbox (not their values: a fact keeps the value it was first seen with)."""
    return set(
        conn.execute(
            "SELECT event_id, rule, lot_id, event_date, defect_type, alert_level FROM ops.alert_outbox"
        ).fetchall()
    )


def warehouse(path: Path) -> duckdb.DuckDBPyConnection:
    conn = connect(path)
    ensure_schema(conn)
    return conn


@pytest.fixture
def conn(tmp_path: Path):
    connection = warehouse(tmp_path / "warehouse.duckdb")
    yield connection
    connection.close()


def test_an_incremental_evaluation_finds_what_a_fresh_one_finds(tmp_path: Path, conn) -> None:
    rules = load_rules()
    fab = Fab(conn)
    fab.land(history(fab))
    first = evaluate_into_outbox(conn, rules)
    assert first.baseline_frozen_now and first.baseline is not None
    assert ("lot_mean_score", "L040") in {(v.rule, v.lot_id) for v in first.new_violations}

    fab.land(change(fab))
    second = evaluate_into_outbox(conn, rules)
    found = {(v.rule, v.lot_id) for v in second.new_violations}
    assert (WE2, "L048") in found, "an unchanged lot is re-judged when a changed one enters its window"
    assert (WE2, "L060") in found, "a new lot is judged with its predecessors"
    assert ("lot_mean_score", "L063") in found
    assert "L062" not in {lot for _, lot in found}, "u-chart limits widened by the baseline lots' sigma_z"
    assert second.lots_evaluated == 5 and not second.baseline_frozen_now
    assert second.lots_read <= 5 * (2 * LOOKBACK + 1) + len(first.baseline.lot_ids)

    fresh = warehouse(tmp_path / "fresh.duckdb")
    try:
        again = Fab(fresh)
        again.land(history(again) + change(again))
        evaluate_into_outbox(fresh, rules)
        assert outbox(conn) == outbox(fresh)
    finally:
        fresh.close()


def test_a_cycle_over_one_new_lot_reads_only_that_lot_and_its_neighbours(conn) -> None:
    rules = load_rules()
    fab = Fab(conn)
    fab.land(history(fab, lots=120))
    full = evaluate_into_outbox(conn, rules)
    assert full.lots_read == 120

    fab.land(fab.lot_events(120, 0.95))
    lot_ids, days = changed_partitions(conn, rules)
    assert lot_ids == ["L120"] and days == [(T0 + dt.timedelta(hours=240)).date()]
    assert not mart_quality_problems(conn, lot_ids, days)
    counts = lot_quality_counts(conn, lot_ids)
    assert counts["raw_events_checked"] == CHIPS and counts["mart_rows_checked"] == 1
    (history_rows,) = conn.execute("SELECT count(*) FROM raw.inspection_events").fetchall()[0]
    assert history_rows == 121 * CHIPS
    assert defect_rate_counts(conn, days)["raw_events_checked"] == fab.day_rows[days[0]] < history_rows / 5

    cycle = evaluate_into_outbox(conn, rules)
    assert cycle.lots_evaluated == 1 and cycle.spc_lots_judged == 1
    assert cycle.lots_read == 1 + LOOKBACK + len(full.baseline.lot_ids)  # type: ignore[union-attr]


def test_checks_without_partitions_read_the_recent_window(conn) -> None:
    fab = Fab(conn)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    old = [e for index in range(6) for e in fab.lot_events(index, 0.95, start=now - dt.timedelta(days=30))]
    recent = [e for index in range(6, 8) for e in fab.lot_events(index, 0.95, start=now - dt.timedelta(hours=20))]
    fab.land(old + recent)

    scope = lot_scope(conn)
    assert scope.lot_ids == ("L006", "L007")
    assert scope.label.startswith(f"lots on {(now - dt.timedelta(days=2)).date()}..") and "(2 lots)" in scope.label
    assert lot_quality_counts(conn)["raw_events_checked"] == 2 * CHIPS
    assert lot_quality_counts(conn, [f"L{i:03d}" for i in range(8)])["raw_events_checked"] == 8 * CHIPS
    assert lot_quality_counts(conn, [])["raw_events_checked"] == 0
    assert defect_rate_counts(conn)["raw_events_checked"] == 2 * CHIPS
    assert freshness(conn, "lots", 600.0)["partitions_with_data"] == 2
    assert freshness(conn, "lots", 600.0, ["L000"])["partitions_with_data"] == 1
    assert freshness(conn, "days", 600.0)["partitions_behind"] == 0

    # A lot of the old days with fewer mart inspections than raw: outside the window, not compared.
    conn.execute("UPDATE marts.lot_quality_scores SET inspections_completed = 1 WHERE lot_id IN ('L000', 'L007')")
    reconciled = flow.raw_vs_lot_mart(conn, settle_seconds=0.0)
    assert (reconciled["lots_compared"], reconciled["lots_mismatched"]) == (2, 1)
    assert reconciled["examples"][0]["lot_id"] == "L007" and "(2 lots)" in reconciled["scope"]


def test_outbox_rows_carry_the_change_seq_of_their_last_change(conn) -> None:
    rules = load_rules()
    fab = Fab(conn)
    fab.land(history(fab))
    evaluate_into_outbox(conn, rules)
    ((first, unstamped),) = conn.execute(
        "SELECT max(change_seq), count(*) FILTER (WHERE change_seq IS NULL) FROM ops.alert_outbox"
    ).fetchall()
    assert first is not None and unstamped == 0
    fab.land(fab.lot_events(60, 0.80))
    evaluate_into_outbox(conn, rules)
    newer = conn.execute("SELECT change_seq FROM ops.alert_outbox WHERE lot_id = 'L060'").fetchall()
    assert newer and all(seq > first for (seq,) in newer)
