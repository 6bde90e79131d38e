"""The alert outbox: rules evaluated on changed mart partitions, violations published to Kafka.

No Dagster here (the assets call these inside the ``duckdb_writer`` slot).
Evaluation is one DuckDB transaction: new violations, the SPC baseline when it
freezes, and the watermarks of what was evaluated. Publishing sends the
unpublished rows and marks only the acknowledged ones, so a crash between the
send and the mark re-sends the same event ids on the next run.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pandas as pd

from chipq_pipelines.alerts.sql import load as _sql
from chipq_pipelines.events import builders
from chipq_pipelines.events.delivery import DeliveryReport
from chipq_pipelines.ingest.reader import FAULT_ENV
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

#: Rules that judge a quality score: their events also carry it as quality_score.
SCORE_RULES = {"lot_mean_score", "spc_we1_beyond_3sigma", "spc_we2_2of3_beyond_2sigma"}
SCORE_RULES |= {"spc_we3_4of5_beyond_1sigma", "spc_we4_8_in_a_row"}
PUBLISH_BATCH = 500
OUTBOX_COLUMNS = [
    "event_id", "rule", "rules_version", "scope", "lot_id", "event_date", "defect_type", "alert_level",
    "threshold", "observed_value", "message", "detected_at",
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


def _records(conn: duckdb.DuckDBPyConnection, name: str, params: dict[str, Any] | None = None) -> list[dict]:
    relation = conn.execute(_sql(name), params or {})
    columns = [d[0] for d in relation.description or []]
    return [dict(zip(columns, row, strict=True)) for row in relation.fetchall()]


def _state(conn: duckdb.DuckDBPyConnection, name: str) -> tuple[dt.datetime | None, str | None]:
    rows = conn.execute(_sql("evaluation_state_get"), {"name": name}).fetchall()
    return (rows[0][0], rows[0][1]) if rows else (None, None)


def _set_state(conn: duckdb.DuckDBPyConnection, name: str, watermark: dt.datetime | None, version: str) -> None:
    conn.execute(_sql("evaluation_state_set"), {"name": name, "watermark": watermark, "rules_version": version})


def _stored_baseline(conn: duckdb.DuckDBPyConnection) -> tuple[int, Baseline] | None:
    rows = _records(conn, "spc_baseline_get")
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


def evaluate_into_outbox(conn: duckdb.DuckDBPyConnection, rules: RuleSet) -> Evaluation:
    """Evaluate the rules on the mart partitions rewritten since the last evaluation; store new violations.

    Changed = ``updated_at`` newer than the stored watermark; a different rules
    file re-evaluates everything. SPC re-judges each changed lot and the lots
    whose Western Electric windows include it. Idempotent: the same facts give
    the same event ids, which the outbox keeps once.

    Bounded: only the changed lots, their ``LOOKBACK`` scored neighbours on either
    side (the windows that judge them and that they are part of) and the frozen
    baseline's own lots are read, so a cycle costs what changed, not what the
    warehouse holds. Two one-off events read every lot, as they must: a full
    re-evaluation (new rules file) and the cycle that freezes the first baseline
    (every lot so far is judged against the limits that did not exist before).
    """
    state_version = _state_version(rules)
    evaluation = Evaluation(rules_version=rules.version)
    with transaction(conn):
        lot_since = _since(conn, "lots", state_version)
        day_since = _since(conn, "days", state_version)
        evaluation.full_reevaluation = lot_since is None and day_since is None
        lots = _records(conn, "lots_to_evaluate", {"since": lot_since, "lookback": LOOKBACK})
        changed = [lot for lot in lots if lot["changed"]]
        evaluation.lots_read = len(lots)
        violations: list[Violation] = []
        for lot in changed:
            violations += evaluate_lot(rules, lot)
        evaluation.lots_evaluated = len(changed)
        if rules.spc.enabled:
            violations += _evaluate_spc(conn, rules, lots, {str(lot["lot_id"]) for lot in changed}, evaluation)
        days = _records(conn, "days_to_evaluate", {"since": day_since})
        violations += evaluate_day(rules, days)
        evaluation.days_evaluated = len({row["event_date"] for row in days})
        evaluation.violations_found = len(violations)
        evaluation.new_violations = _insert(conn, violations)
        _set_state(conn, "lots", max([lot["updated_at"] for lot in changed], default=lot_since), state_version)
        _set_state(conn, "days", max([row["updated_at"] for row in days], default=day_since), state_version)
    return evaluation


def _evaluate_spc(
    conn: duckdb.DuckDBPyConnection, rules: RuleSet, lots: list[dict], changed: set[str], evaluation: Evaluation
) -> list[Violation]:
    """SPC on ``lots`` (the changed lots and their neighbours): the changed ones and those whose windows hold them."""
    if rules.spc.baseline is not None:
        baseline, tag = freeze_baseline([], rules.spc), "cfg"
    else:
        stored = _stored_baseline(conn)
        if stored is None:
            frozen = _freeze_first_baseline(conn, rules)
            if frozen is None:
                return []
            stored = (_store_baseline(conn, frozen), frozen)
            evaluation.baseline_frozen_now = True
            # Nothing was judged before the limits existed: every lot is, now.
            lots = _records(conn, "lots_to_evaluate", {"since": None, "lookback": LOOKBACK})
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
        return []
    if baseline.values.u_sigma_z is None or baseline.values.p_sigma_z is None:
        # A stored baseline has no sigma_z: re-derived from the baseline's own lots, read by id.
        own = _records(conn, "lots_by_id", {"lots": list(baseline.lot_ids)})
        evaluation.lots_read += len(own)
        baseline = baseline.with_dispersion([LotPoint.from_row(lot) for lot in own])
    return evaluate_spc(points, baseline, rules.spc, f"{rules.version}+{tag}", judge)


def _freeze_first_baseline(conn: duckdb.DuckDBPyConnection, rules: RuleSet) -> Baseline | None:
    """``freeze_baseline`` over the earliest lots, read a growing prefix at a time instead of every lot.

    It only ever looks at the first candidates in time order, so a prefix of the
    lots freezes the same baseline as all of them once it holds enough candidates;
    None only when the prefix already is every lot.
    """
    limit = 2 * rules.spc.baseline_lots
    while True:
        first = _records(conn, "first_lots", {"limit": limit})
        frozen = _freeze(rules, first)
        if frozen is not None or len(first) < limit:
            return frozen
        limit *= 4


def _freeze(rules: RuleSet, lots: list[dict]) -> Baseline | None:
    in_control = {str(lot["lot_id"]) for lot in lots if lot_in_control(rules, lot)}
    points = [LotPoint.from_row(lot) for lot in lots]
    return freeze_baseline(points, rules.spc, lambda p: p.lot_id in in_control)


def _next_change_seq(conn: duckdb.DuckDBPyConnection) -> int:
    """A new ``ops.change_seq`` value: stamped on the outbox rows a statement changes (the snapshot copies those)."""
    ((seq,),) = conn.execute("SELECT nextval('ops.change_seq')").fetchall()
    return int(seq)


def _insert(conn: duckdb.DuckDBPyConnection, violations: Sequence[Violation]) -> list[Violation]:
    if not violations:
        return []
    unique = {v.event_id: v for v in violations}
    now = dt.datetime.now(dt.UTC).replace(microsecond=dt.datetime.now(dt.UTC).microsecond // 1000 * 1000)
    frame = pd.DataFrame(
        [
            [
                event_id, v.rule, v.rules_version, v.scope, v.lot_id, v.event_date, v.defect_type, v.alert_level,
                v.threshold, v.observed_value, v.message, now,
            ]
            for event_id, v in unique.items()
        ],
        columns=OUTBOX_COLUMNS,
    )  # fmt: skip
    frame["event_date"] = pd.to_datetime(frame["event_date"]).dt.date
    change_seq = _next_change_seq(conn)
    conn.register("new_violations", frame)
    try:
        inserted = {row[0] for row in conn.execute(_sql("outbox_insert"), {"change_seq": change_seq}).fetchall()}
    finally:
        conn.unregister("new_violations")
    return [v for event_id, v in unique.items() if event_id in inserted]


# ------------------------------------------------------------------ publishing


@dataclass
class Publication:
    """What one publish run did."""

    sent: int = 0
    acknowledged: int = 0
    resent: int = 0
    published: list[dict[str, Any]] = field(default_factory=list)


def _fault(point: str) -> None:
    # Same switch as the ingest reader: the reliability tests kill the process here.
    if os.environ.get(FAULT_ENV) == point:
        log.error("fault injection: exiting hard at %s", point)
        os._exit(137)


def threshold_violated_event(row: dict[str, Any]) -> dict[str, Any]:
    """The complete THRESHOLD_VIOLATED event of an outbox row (same row, same event)."""
    lot_scope = row["scope"] == "LOT"
    return builders.quality_event(
        "THRESHOLD_VIOLATED",
        event_id=row["event_id"],
        event_time=row["detected_at"],
        correlation_id=f"chipq-alert-{row['event_id']}",
        scope=row["scope"],
        inspection_id=None,
        batch_id=row["lot_id"] if lot_scope else None,
        event_date=None if lot_scope else row["event_date"],
        defect_type=row["defect_type"],
        rule=row["rule"],
        threshold=float(row["threshold"]),
        observed_value=float(row["observed_value"]),
        quality_score=float(row["observed_value"]) if row["rule"] in SCORE_RULES else None,
        pass_fail=False,
        alert_level=row["alert_level"],
        metadata={"rules_version": row["rules_version"], "message": row["message"], "source": "chipq-alerts"},
    )


def publish_outbox(
    conn: duckdb.DuckDBPyConnection,
    publish_batch: Callable[[list[dict[str, Any]]], list[DeliveryReport]],
    *,
    batch_size: int = PUBLISH_BATCH,
) -> Publication:
    """Send every unpublished outbox row; mark a row published only once Kafka acknowledged it.

    ``publish_batch`` is ``SyncQualityEventProducer.publish_batch`` (blocking until
    every event is acknowledged; ``PublishError`` when any is not). Unacknowledged
    rows stay unpublished, so the next run sends them again under the same ids.
    """
    publication = Publication()
    while True:
        rows = _records(conn, "outbox_unpublished", {"limit": batch_size})
        if not rows:
            return publication
        sending = pd.DataFrame({"event_id": [r["event_id"] for r in rows]})
        change_seq = _next_change_seq(conn)
        conn.register("sending", sending)
        try:
            conn.execute(_sql("outbox_count_attempt"), {"change_seq": change_seq})
        finally:
            conn.unregister("sending")
        publication.sent += len(rows)
        publication.resent += sum(1 for r in rows if r["publish_attempts"] > 0)
        events = [threshold_violated_event(r) for r in rows]
        # All or nothing per batch: on a PublishError nothing is marked, the run fails and the
        # next run re-sends the batch with the same event ids (consumers dedupe the acknowledged ones).
        reports = publish_batch(events)
        _fault("alerts_after_send")
        acked = list(zip(rows, reports, strict=True))
        _mark(conn, acked)
        publication.acknowledged += len(acked)
        publication.published += [_published_row(row, report) for row, report in acked]


def _mark(conn: duckdb.DuckDBPyConnection, acked: list[tuple[dict[str, Any], DeliveryReport]]) -> None:
    if not acked:
        return
    now = dt.datetime.now(dt.UTC)
    frame = pd.DataFrame(
        {
            "event_id": [row["event_id"] for row, _ in acked],
            "published_at": [now] * len(acked),
            "kafka_partition": [report.partition for _, report in acked],
            "kafka_offset": [report.offset for _, report in acked],
        }
    )
    change_seq = _next_change_seq(conn)
    conn.register("acked", frame)
    try:
        conn.execute(_sql("outbox_mark_published"), {"change_seq": change_seq})
    finally:
        conn.unregister("acked")


def _published_row(row: dict[str, Any], report: DeliveryReport) -> dict[str, Any]:
    subject = (
        row["lot_id"]
        if row["scope"] == "LOT"
        else f"{row['event_date']}" + (f" / {row['defect_type']}" if row["defect_type"] else "")
    )
    return {
        "rule": row["rule"],
        "level": row["alert_level"],
        "scope": row["scope"],
        "subject": subject,
        "observed": row["observed_value"],
        "limit": row["threshold"],
        "event_id": row["event_id"],
        "partition": report.partition,
        "offset": report.offset,
    }
