"""Fixed-threshold rules on lot and day mart rows, and the violation they produce.

Pure Python over plain rows (dicts): the alerts asset reads the marts and
stores what comes out here. A violation's ``event_id`` is a uuid5 of rule,
level, scope, partition and rules version: evaluating the same fact again
gives the same id, so the outbox and consumers see it once.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from chipq_pipelines.rules.loader import RuleSet, ThresholdRule

ALERT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://chipq.dev/alerts/threshold-violated")


@dataclass(frozen=True)
class Violation:
    """One threshold violation: which rule fired where, what was observed and the limit it crossed."""

    rule: str
    scope: str  # LOT or DAY
    alert_level: str
    threshold: float
    observed_value: float
    rules_version: str
    message: str
    lot_id: str | None = None
    event_date: dt.date | None = None
    defect_type: str | None = None

    @property
    def partition(self) -> str:
        if self.scope == "LOT":
            return str(self.lot_id)
        assert self.event_date is not None
        return self.event_date.isoformat() + (f"/{self.defect_type}" if self.defect_type else "")

    @property
    def subject(self) -> tuple[str, str, str | None, dt.date | None, str | None]:
        """(rule, scope, lot_id, event_date, defect_type): what an alert episode is about."""
        return (self.rule, self.scope, self.lot_id, self.event_date, self.defect_type)

    @property
    def event_id(self) -> str:
        """The id in the first episode (``violation_event_id`` for later ones)."""
        return violation_event_id(
            self.rule, self.alert_level, self.scope, self.lot_id, self.event_date, self.defect_type, self.rules_version
        )


def violation_event_id(
    rule: str,
    alert_level: str,
    scope: str,
    lot_id: str | None,
    event_date: dt.date | None,
    defect_type: str | None,
    rules_version: str,
    episode: int = 1,
) -> str:
    """Deterministic THRESHOLD_VIOLATED event id of a violation.

    The level is part of the identity: a lot that worsens from WARNING to CRITICAL
    raises a second, CRITICAL alert; the same level again raises nothing. So is the
    episode (1, 2, ... per rule and subject, see ``alerts.lifecycle``): breaking a rule
    again after a THRESHOLD_CLEARED is a new violation. Episode 1 keeps the id chipq
    gave before episodes existed, so the ids already on the topic stay valid.
    """
    day = event_date.isoformat() if event_date else None
    parts: list[object] = [rule, alert_level, scope, lot_id, day, defect_type, rules_version]
    if episode != 1:
        parts.append(episode)
    return str(uuid.uuid5(ALERT_NAMESPACE, json.dumps(parts)))


def clearance_event_id(
    rule: str, scope: str, lot_id: str | None, event_date: dt.date | None, defect_type: str | None, episode: int
) -> str:
    """Deterministic THRESHOLD_CLEARED event id: one per rule, subject and episode (whatever the level or rules)."""
    day = event_date.isoformat() if event_date else None
    name = json.dumps(["THRESHOLD_CLEARED", rule, scope, lot_id, day, defect_type, episode])
    return str(uuid.uuid5(ALERT_NAMESPACE, name))


def _worst_breach(rule: ThresholdRule, observed: float, limits: Mapping[str, float]) -> tuple[str, float] | None:
    for level in ("CRITICAL", "WARNING"):
        if level in limits and rule.breaches(observed, limits[level]):
            return level, limits[level]
    return None


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def evaluate_lot(rules: RuleSet, lot: Mapping[str, Any]) -> list[Violation]:
    """Fixed lot rules on one ``marts.lot_quality_scores`` row."""
    out = []
    for rule in rules.lot_rules:
        observed = _number(lot.get(rule.metric))
        if observed is None:
            continue
        breach = _worst_breach(rule, observed, rule.levels)
        if breach is None:
            continue
        level, limit = breach
        out.append(
            Violation(
                rule=rule.rule,
                scope="LOT",
                alert_level=level,
                threshold=limit,
                observed_value=observed,
                rules_version=rules.version,
                message=f"{rule.metric} {observed:g} is {rule.direction} the {level} limit {limit:g}",
                lot_id=str(lot["lot_id"]),
            )
        )
    return out


def evaluate_day(rules: RuleSet, rows: Iterable[Mapping[str, Any]]) -> list[Violation]:
    """Daily rules on ``marts.defect_rates`` rows (one per day and defect type)."""
    out = []
    for row in rows:
        day = row["event_date"]
        day = day if isinstance(day, dt.date) else dt.date.fromisoformat(str(day))
        day = day.date() if isinstance(day, dt.datetime) else day
        defect_type = str(row["defect_type"])
        for rule in rules.day_rules:
            observed = _number(row.get(rule.metric))
            if observed is None:
                continue
            breach = _worst_breach(rule, observed, rule.limits_for(defect_type))
            if breach is None:
                continue
            level, limit = breach
            out.append(
                Violation(
                    rule=rule.rule,
                    scope="DAY",
                    alert_level=level,
                    threshold=limit,
                    observed_value=observed,
                    rules_version=rules.version,
                    message=(
                        f"{defect_type} {rule.metric} {observed:g} on {day.isoformat()} is {rule.direction} "
                        f"the {level} limit {limit:g}"
                    ),
                    event_date=day,
                    defect_type=defect_type,
                )
            )
    return out


def lot_in_control(rules: RuleSet, lot: Mapping[str, Any]) -> bool:
    """Whether a lot passes every fixed lot rule (a candidate for the SPC baseline)."""
    return not evaluate_lot(rules, lot)
