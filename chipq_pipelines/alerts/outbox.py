"""The alert outbox: rules evaluated on changed mart partitions into violations and clearances.

No Dagster here (the assets call these inside the ``duckdb_writer`` slot).
Evaluation is one DuckDB transaction: chipq's alert events landed from the quality
topic joined to the history, new violations and clearances (``lifecycle``), the SPC
baseline when it freezes, and the watermarks of what was evaluated. ``publish``
sends the outbox.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pandas as pd

from chipq_pipelines.alerts import lifecycle
from chipq_pipelines.alerts.fence import TopicFence
from chipq_pipelines.alerts.sql import load as _sql
from chipq_pipelines.rules.evaluate import Violation, evaluate_day, evaluate_lot, lot_in_control
from chipq_pipelines.rules.loader import RuleSet, SpcBaselineValues
from chipq_pipelines.rules.spc import (
    LOOKBACK,
    Baseline,
    LotPoint,
    evaluate_spc,
    freeze_baseline,
    lots_to_rejudge,
)
from chipq_pipelines.warehouse.schema import transaction

log = logging.getLogger(__name__)

OUTBOX_COLUMNS = [
    "event_id", "event_type", "episode", "rule", "rules_version", "scope", "lot_id", "event_date", "defect_type",
    "alert_level", "threshold", "observed_value", "message", "detected_at",
]  # fmt: skip


@dataclass
class Evaluation:
    """What one evaluation found: for run metadata."""

    rules_version: str
    lots_evaluated: int = 0
    #: lot mart rows read into Python: the changed lots, their SPC neighbours and the baseline's own lots
    lots_read: int = 0
    days_evaluated: int = 0
    spc_lots_judged: int = 0
    violations_found: int = 0
    new_violations: list[Violation] = field(default_factory=list)
    #: THRESHOLD_CLEARED rows stored by this evaluation: subjects that stopped breaking a rule
    new_clearances: list[lifecycle.Clearance] = field(default_factory=list)
    #: chipq's alert events found on the quality topic and brought into the outbox
    found_on_topic: int = 0
    #: why nothing was evaluated (partitions not landed up to the fence); empty when evaluated
    deferred: list[str] = field(default_factory=list)
    baseline: Baseline | None = None
    baseline_id: int | None = None
    baseline_frozen_now: bool = False
    full_reevaluation: bool = False

    @property
    def baseline_status(self) -> str:
        if self.baseline is None:
            return "not frozen yet (too few in-control lots)"
        values = self.baseline.values
        origin = (
            "configured in the rules file"
            if self.baseline.source == "configured"
            else (
                f"baseline {self.baseline_id}, {len(self.baseline.lot_ids)} lots"
                f" ({len(self.baseline.removed_lot_ids)} special causes removed)"
            )
        )
        return (
            f"{origin}: mean score {values.mean_score:.4f} ± {values.sigma_score:.4f}, "
            f"u_bar {values.u_bar:.4f}, p_bar {values.p_bar:.4f}"
        )


def records(conn: duckdb.DuckDBPyConnection, name: str, params: dict[str, Any] | None = None) -> list[dict]:
    relation = conn.execute(_sql(name), params or {})
    columns = [d[0] for d in relation.description or []]
    return [dict(zip(columns, row, strict=True)) for row in relation.fetchall()]


def _state(conn: duckdb.DuckDBPyConnection, name: str) -> tuple[dt.datetime | None, str | None]:
    rows = conn.execute(_sql("evaluation_state_get"), {"name": name}).fetchall()
    return (rows[0][0], rows[0][1]) if rows else (None, None)


def _set_state(conn: duckdb.DuckDBPyConnection, name: str, watermark: dt.datetime | None, version: str) -> None:
    conn.execute(_sql("evaluation_state_set"), {"name": name, "watermark": watermark, "rules_version": version})


def _stored_baseline(conn: duckdb.DuckDBPyConnection) -> tuple[int, Baseline] | None:
    rows = records(conn, "spc_baseline_get")
    if not rows:
        return None
    row = rows[0]
    values = SpcBaselineValues(row["mean_score"], row["sigma_score"], row["u_bar"], row["p_bar"])
    return row["baseline_id"], Baseline(values, tuple(row["lot_ids"]), tuple(row["removed_lot_ids"]), row["source"])


def _store_baseline(conn: duckdb.DuckDBPyConnection, baseline: Baseline) -> int:
    values = baseline.values
    params = {
        "source": baseline.source,
        "mean_score": values.mean_score,
        "sigma_score": values.sigma_score,
        "u_bar": values.u_bar,
        "p_bar": values.p_bar,
        "lot_count": len(baseline.lot_ids),
        "lot_ids": list(baseline.lot_ids),
        "removed_lot_ids": list(baseline.removed_lot_ids),
    }
    ((baseline_id,),) = conn.execute(_sql("spc_baseline_insert"), params).fetchall()
    return int(baseline_id)


def _since(conn: duckdb.DuckDBPyConnection, name: str, state_version: str) -> dt.datetime | None:
    """The watermark of ``name`` (lots or days), or None (evaluate everything) under other rules."""
    since, version = _state(conn, name)
    return since if version == state_version else None


def _state_version(rules: RuleSet) -> str:
    return f"{rules.version}#{rules.digest}"


def changed_partitions(conn: duckdb.DuckDBPyConnection, rules: RuleSet) -> tuple[list[str], list[dt.date]]:
    """The lots and days the next ``evaluate_into_outbox`` evaluates: rewritten since its watermarks.

    Every lot and day after a change of rules file (a full re-evaluation). The alerts asset
    runs the marts' data-quality checks on exactly these before evaluating.
    """
    state_version = _state_version(rules)
    lot_since = _since(conn, "lots", state_version)
    day_since = _since(conn, "days", state_version)
    lot_ids = [row[0] for row in conn.execute(_sql("changed_lots"), {"since": lot_since}).fetchall()]
    days = [row[0] for row in conn.execute(_sql("changed_days"), {"since": day_since}).fetchall()]
    return lot_ids, days


def evaluate_into_outbox(
    conn: duckdb.DuckDBPyConnection,
    rules: RuleSet,
    fence: TopicFence | None = None,
    *,
    quarantined_lots: Collection[str] = (),
    quarantined_days: Collection[dt.date] = (),
) -> Evaluation:
    """Evaluate the rules on the mart partitions rewritten since the last evaluation; store what changed.

    Changed = ``updated_at`` newer than the stored watermark; a different rules
    file re-evaluates everything. SPC re-judges each changed lot and the lots
    whose Western Electric windows include it. Every rule judged on a subject goes
    through ``lifecycle``: new violations (a new episode after a clearance) and
    THRESHOLD_CLEARED for subjects that stopped breaking a rule. Idempotent: the
    same facts and history give the same event ids, which the outbox keeps once.

    ``quarantined_lots`` and ``quarantined_days`` (partitions whose data fails the marts'
    data-quality checks) are passed over: never alerted (nor cleared) from, but not
    blocking anything else; they are judged again when they change next.

    With ``fence``, nothing is evaluated (``deferred`` says why; the watermarks stay,
    so a later run evaluates it all) until the topics are landed up to the fence:
    a warehouse rebuilt from Kafka first lands the alerts the one before it published.

    Bounded: only the changed lots, their ``LOOKBACK`` scored neighbours on either
    side (the windows that judge them and that they are part of) and the frozen
    baseline's own lots are read, so a cycle costs what changed, not what the
    warehouse holds. Two one-off events read every lot, as they must: a full
    re-evaluation (new rules file) and the cycle that freezes the first baseline
    (every lot so far is judged against the limits that did not exist before).
    """
    state_version = _state_version(rules)
    evaluation = Evaluation(rules_version=rules.version)
    if fence is not None:
        with transaction(conn):
            evaluation.deferred = fence.before_evaluation(conn)
        if evaluation.deferred:
            log.warning("alerts not evaluated yet: %s", "; ".join(evaluation.deferred))
            return evaluation
    with transaction(conn):
        evaluation.found_on_topic = lifecycle.import_from_topic(conn, next_change_seq(conn))
        lot_since = _since(conn, "lots", state_version)
        day_since = _since(conn, "days", state_version)
        evaluation.full_reevaluation = lot_since is None and day_since is None
        every_lot = records(conn, "lots_to_evaluate", {"since": lot_since, "lookback": LOOKBACK})
        every_changed = [lot for lot in every_lot if lot["changed"]]
        lots = [lot for lot in every_lot if str(lot["lot_id"]) not in quarantined_lots]
        changed = [lot for lot in lots if lot["changed"]]
        evaluation.lots_read = len(every_lot)
        violations: list[Violation] = []
        for lot in changed:
            violations += evaluate_lot(rules, lot)
        judged = lifecycle.lot_judgements(rules, changed)
        evaluation.lots_evaluated = len(changed)
        if rules.spc.enabled:
            spc_violations, spc_judged = _evaluate_spc(
                conn, rules, lots, {str(lot["lot_id"]) for lot in changed}, evaluation
            )
            violations += spc_violations
            judged += spc_judged
        every_day = records(conn, "days_to_evaluate", {"since": day_since})
        days = [row for row in every_day if row["event_date"] not in quarantined_days]
        violations += evaluate_day(rules, days)
        judged += lifecycle.day_judgements(rules, days)
        evaluation.days_evaluated = len({row["event_date"] for row in days})
        evaluation.violations_found = len(violations)
        _store_transitions(conn, judged, violations, evaluation)
        _set_state(conn, "lots", max([lot["updated_at"] for lot in every_changed], default=lot_since), state_version)
        _set_state(conn, "days", max([row["updated_at"] for row in every_day], default=day_since), state_version)
    return evaluation


def _store_transitions(
    conn: duckdb.DuckDBPyConnection,
    judged: list[lifecycle.Judgement],
    violations: list[Violation],
    evaluation: Evaluation,
) -> None:
    """Store the lifecycle's violations (with episodes) and clearances; the new ones go into ``evaluation``."""
    episodes = lifecycle.latest_episodes(conn, [j.subject for j in judged] + [v.subject for v in violations])
    raised, cleared = lifecycle.transitions(judged, violations, episodes, evaluation.rules_version)
    now = dt.datetime.now(dt.UTC)
    rows = lifecycle.outbox_rows(raised, cleared, now.replace(microsecond=now.microsecond // 1000 * 1000))
    inserted = _insert(conn, rows)
    events = iter(rows)
    for violation, _episode in raised:
        if next(events)["event_id"] in inserted:
            evaluation.new_violations.append(violation)
    evaluation.new_clearances = [c for c in cleared if next(events)["event_id"] in inserted]


def _evaluate_spc(
    conn: duckdb.DuckDBPyConnection, rules: RuleSet, lots: list[dict], changed: set[str], evaluation: Evaluation
) -> tuple[list[Violation], list[lifecycle.Judgement]]:
    """SPC on ``lots`` (the changed lots and their neighbours): the changed ones and those whose windows hold them.

    Returns the violations and every (rule, lot) judged.
    """
    if rules.spc.baseline is not None:
        baseline, tag = freeze_baseline([], rules.spc), "cfg"
    else:
        stored = _stored_baseline(conn)
        if stored is None:
            frozen = _freeze_first_baseline(conn, rules)
            if frozen is None:
                return [], []
            stored = (_store_baseline(conn, frozen), frozen)
            evaluation.baseline_frozen_now = True
            # Nothing was judged before the limits existed: every lot is, now.
            lots = records(conn, "lots_to_evaluate", {"since": None, "lookback": LOOKBACK})
            changed = {str(lot["lot_id"]) for lot in lots}
            evaluation.lots_read = len(lots)
        evaluation.baseline_id, baseline = stored
        tag = f"b{evaluation.baseline_id}"
    assert baseline is not None
    evaluation.baseline = baseline
    points = [LotPoint.from_row(lot) for lot in lots]
    judge = lots_to_rejudge(points, changed)
    evaluation.spc_lots_judged = len(judge)
    if not judge:
        return [], []
    if baseline.values.u_sigma_z is None or baseline.values.p_sigma_z is None:
        # A stored baseline has no sigma_z: re-derived from the baseline's own lots, read by id.
        own = records(conn, "lots_by_id", {"lots": list(baseline.lot_ids)})
        evaluation.lots_read += len(own)
        baseline = baseline.with_dispersion([LotPoint.from_row(lot) for lot in own])
    violations = evaluate_spc(points, baseline, rules.spc, f"{rules.version}+{tag}", judge)
    return violations, lifecycle.spc_judgements(points, judge, rules.spc, baseline)


def _freeze_first_baseline(conn: duckdb.DuckDBPyConnection, rules: RuleSet) -> Baseline | None:
    """``freeze_baseline`` over the earliest lots, read a growing prefix at a time instead of every lot.

    It only ever looks at the first candidates in time order, so a prefix of the
    lots freezes the same baseline as all of them once it holds enough candidates;
    None only when the prefix already is every lot.
    """
    limit = 2 * rules.spc.baseline_lots
    while True:
        first = records(conn, "first_lots", {"limit": limit})
        frozen = _freeze(rules, first)
        if frozen is not None or len(first) < limit:
            return frozen
        limit *= 4


def _freeze(rules: RuleSet, lots: list[dict]) -> Baseline | None:
    in_control = {str(lot["lot_id"]) for lot in lots if lot_in_control(rules, lot)}
    points = [LotPoint.from_row(lot) for lot in lots]
    return freeze_baseline(points, rules.spc, lambda p: p.lot_id in in_control)


def next_change_seq(conn: duckdb.DuckDBPyConnection) -> int:
    """A new ``ops.change_seq`` value: stamped on the outbox rows a statement changes (the snapshot copies those)."""
    ((seq,),) = conn.execute("SELECT nextval('ops.change_seq')").fetchall()
    return int(seq)


def _insert(conn: duckdb.DuckDBPyConnection, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Store outbox rows (``lifecycle.outbox_rows``); the event ids that were new."""
    if not rows:
        return set()
    frame = pd.DataFrame(list({row["event_id"]: row for row in rows}.values()), columns=OUTBOX_COLUMNS)
    frame["event_date"] = pd.to_datetime(frame["event_date"]).dt.date
    frame["episode"] = frame["episode"].astype("int32")
    change_seq = next_change_seq(conn)
    conn.register("new_alerts", frame)
    try:
        return {row[0] for row in conn.execute(_sql("outbox_insert"), {"change_seq": change_seq}).fetchall()}
    finally:
        conn.unregister("new_alerts")
