"""Alert lifecycle: episodes of one rule on one subject, raised by THRESHOLD_VIOLATED, ended by THRESHOLD_CLEARED.

A subject is a lot (LOT scope) or a day and defect type (DAY scope). Each evaluation
judges some (rule, subject) pairs; for each one judged:

- breaking, and its latest episode is open: a violation in that episode (a known
  event id when the level and rules are the same: nothing new);
- breaking, and no episode yet or the latest one cleared: a violation opening the
  next episode (1, 2, ...), so a new event id;
- not breaking, and its latest episode is open: one THRESHOLD_CLEARED for that episode.

The history is ``ops.alert_outbox``, which also holds chipq's own alert events found
on the quality topic (``import_from_topic``): a warehouse rebuilt from Kafka derives the
same episodes, hence the same event ids, as the one it replaces.
No Dagster here; the caller holds the transaction.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import pandas as pd

from chipq_pipelines.alerts.sql import load as _sql
from chipq_pipelines.rules.evaluate import Violation, clearance_event_id, violation_event_id
from chipq_pipelines.rules.loader import RuleSet, SpcSettings
from chipq_pipelines.rules.spc import P_CHART, U_CHART, WE1, WE2, WE3, WE4, Baseline, LotPoint

VIOLATED, CLEARED = "THRESHOLD_VIOLATED", "THRESHOLD_CLEARED"
#: The marker of chipq's own alert events (metadata source; the correlation id is chipq-alert-<event_id>).
SOURCE = "chipq-alerts"
LEVEL_RANK = {"WARNING": 1, "CRITICAL": 2}

Subject = tuple[str, str, str | None, dt.date | None, str | None]  # rule, scope, lot_id, event_date, defect_type


@dataclass(frozen=True)
class Judgement:
    """One rule judged on one subject in this evaluation, with the value it looked at."""

    subject: Subject
    observed_value: float


@dataclass
class Episode:
    """The latest episode of a subject in the history."""

    number: int
    cleared: bool = False
    level: str = "WARNING"  # the highest level raised in it
    threshold: float = math.nan  # the limit of that level


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def lot_judgements(rules: RuleSet, lots: Iterable[Mapping[str, Any]]) -> list[Judgement]:
    """The fixed lot rules judged on ``lots`` (a rule whose metric is missing is not judged)."""
    out = []
    for lot in lots:
        for rule in rules.lot_rules:
            observed = _number(lot.get(rule.metric))
            if observed is not None:
                out.append(Judgement((rule.rule, "LOT", str(lot["lot_id"]), None, None), observed))
    return out


def day_judgements(rules: RuleSet, rows: Iterable[Mapping[str, Any]]) -> list[Judgement]:
    """The daily rules judged on ``marts.defect_rates`` rows."""
    out = []
    for row in rows:
        day = row["event_date"]
        day = day.date() if isinstance(day, dt.datetime) else day
        day = day if isinstance(day, dt.date) else dt.date.fromisoformat(str(day))
        for rule in rules.day_rules:
            observed = _number(row.get(rule.metric))
            if observed is not None:
                out.append(Judgement((rule.rule, "DAY", None, day, str(row["defect_type"])), observed))
    return out


def spc_judgements(
    points: Sequence[LotPoint], judge: set[str], settings: SpcSettings, baseline: Baseline
) -> list[Judgement]:
    """The SPC rules ``evaluate_spc`` judged on the lots in ``judge`` (same conditions as it applies)."""
    enabled = set(settings.rules)
    values = baseline.values
    out = []
    for point in points:
        if point.lot_id not in judge:
            continue
        observed: list[tuple[str, float | None]] = [(rule, point.mean_score) for rule in (WE1, WE2, WE3, WE4)]
        observed.append((U_CHART, point.u if values.u_bar > 0 else None))
        observed.append((P_CHART, point.p if point.inspections and 0 < values.p_bar < 1 else None))
        for rule, value in observed:
            if rule in enabled and value is not None:
                out.append(Judgement((rule, "LOT", point.lot_id, None, None), value))
    return out


def latest_episodes(conn: duckdb.DuckDBPyConnection, subjects: Iterable[Subject]) -> dict[Subject, Episode]:
    """The latest episode of each of ``subjects`` that has a history in ``ops.alert_outbox``."""
    frame = pd.DataFrame(list(set(subjects)), columns=["rule", "scope", "lot_id", "event_date", "defect_type"])
    if frame.empty:
        return {}
    frame["event_date"] = pd.to_datetime(frame["event_date"]).dt.date
    conn.register("judged_subjects", frame)
    try:
        rows = conn.execute(_sql("alert_history_of_subjects")).fetchall()
    finally:
        conn.unregister("judged_subjects")
    latest: dict[Subject, Episode] = {}
    for rule, scope, lot_id, event_date, defect_type, episode, event_type, level, threshold in rows:
        subject: Subject = (rule, scope, lot_id, event_date, defect_type)
        current = latest.get(subject)
        if current is None or episode > current.number:
            current = latest[subject] = Episode(int(episode))
        elif episode < current.number:
            continue
        if event_type == CLEARED:
            current.cleared = True
        elif LEVEL_RANK.get(level, 0) >= LEVEL_RANK.get(current.level, 0) or math.isnan(current.threshold):
            current.level, current.threshold = level, float(threshold)
    return latest


@dataclass(frozen=True)
class Clearance:
    """A THRESHOLD_CLEARED to store: ``subject`` stopped breaking ``rule`` in ``episode``."""

    subject: Subject
    episode: int
    alert_level: str
    threshold: float
    observed_value: float
    rules_version: str

    @property
    def event_id(self) -> str:
        return clearance_event_id(*self.subject, self.episode)

    @property
    def message(self) -> str:
        rule, scope, lot_id, event_date, defect_type = self.subject
        where = lot_id if scope == "LOT" else f"{event_date} / {defect_type}"
        return (
            f"{rule} no longer broken on {where}: now {self.observed_value:g} "
            f"(episode {self.episode} reached {self.alert_level}, limit {self.threshold:g})"
        )


def transitions(
    judgements: Sequence[Judgement],
    violations: Sequence[Violation],
    episodes: Mapping[Subject, Episode],
    rules_version: str,
) -> tuple[list[tuple[Violation, int]], list[Clearance]]:
    """What this evaluation raises (each violation with its episode) and clears; see the module doc."""
    raised = []
    for violation in violations:
        latest = episodes.get(violation.subject)
        # A first violation opens episode 1; after a clearance, the next one; else it belongs to the open one.
        episode = 1 if latest is None else latest.number + int(latest.cleared)
        raised.append((violation, episode))
    breaking = {v.subject for v in violations}
    cleared = []
    for judgement in judgements:
        latest = episodes.get(judgement.subject)
        if judgement.subject in breaking or latest is None or latest.cleared:
            continue
        cleared.append(
            Clearance(
                judgement.subject,
                latest.number,
                latest.level,
                latest.threshold,
                judgement.observed_value,
                rules_version,
            )
        )
    unique = {c.subject: c for c in cleared}
    return raised, list(unique.values())


def outbox_rows(
    raised: Sequence[tuple[Violation, int]], cleared: Sequence[Clearance], detected_at: dt.datetime
) -> list[dict[str, Any]]:
    """Rows for ``ops.alert_outbox`` of what ``transitions`` returned."""
    rows = []
    for v, episode in raised:
        event_id = violation_event_id(
            v.rule, v.alert_level, v.scope, v.lot_id, v.event_date, v.defect_type, v.rules_version, episode
        )
        rows.append(
            {
                "event_id": event_id, "event_type": VIOLATED, "episode": episode, "rule": v.rule,
                "rules_version": v.rules_version, "scope": v.scope, "lot_id": v.lot_id, "event_date": v.event_date,
                "defect_type": v.defect_type, "alert_level": v.alert_level, "threshold": v.threshold,
                "observed_value": v.observed_value, "message": v.message, "detected_at": detected_at,
            }
        )  # fmt: skip
    for c in cleared:
        rule, scope, lot_id, event_date, defect_type = c.subject
        rows.append(
            {
                "event_id": c.event_id, "event_type": CLEARED, "episode": c.episode, "rule": rule,
                "rules_version": c.rules_version, "scope": scope, "lot_id": lot_id, "event_date": event_date,
                "defect_type": defect_type, "alert_level": c.alert_level, "threshold": c.threshold,
                "observed_value": c.observed_value, "message": c.message, "detected_at": detected_at,
            }
        )  # fmt: skip
    return rows


def import_from_topic(conn: duckdb.DuckDBPyConnection, change_seq: int) -> int:
    """Bring chipq's own alert events landed from the quality topic since the last import into the outbox.

    An event already in the outbox marks its row published with the coordinates found on
    the topic (a crash between send and mark, or a rebuilt warehouse, then never sends it
    again); an event it does not hold (published by the warehouse this one replaces) is
    added as published, so its episode counts. Incremental: rows landed after the stored
    ``landing_seq`` only. Returns how many outbox rows it added or marked.
    """
    ((since,),) = conn.execute(_sql("alert_import_state_get")).fetchall() or [(None,)]
    ((until,),) = conn.execute("SELECT max(landing_seq) FROM raw.quality_events").fetchall()
    if until is None or (since is not None and until <= since):
        return 0
    params = {"since": since or 0, "until": until, "source": SOURCE, "change_seq": change_seq}
    changed = len(conn.execute(_sql("alert_import_from_topic"), params).fetchall())
    conn.execute(_sql("alert_import_state_set"), {"landing_seq": until})
    return changed
