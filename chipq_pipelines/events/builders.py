"""Complete event dicts from the guide's publish arguments.

Producers build here, validate against the schema, then encode. Times are
UTC and cut to milliseconds (what ``timestamp-millis`` stores), so a decoded
event equals the one that was built.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

from chipq_pipelines.events.context import current_correlation_id
from chipq_pipelines.events.errors import EventValidationError

INSPECTION_EVENT_TYPES = ("INSPECTION_CREATED", "INSPECTION_COMPLETED")
#: THRESHOLD_CLEARED came with quality schema v3: v1/v2 readers cannot read it (docs/alerts.md).
QUALITY_EVENT_TYPES = ("QUALITY_ASSESSED", "THRESHOLD_VIOLATED", "THRESHOLD_CLEARED")
#: The event types of a threshold alert's lifecycle: raised, then (maybe) cleared.
ALERT_EVENT_TYPES = ("THRESHOLD_VIOLATED", "THRESHOLD_CLEARED")

_INSPECTION_DEFAULTS: dict[str, Any] = {
    "wafer_id": None,
    "station_id": None,
    "quality_score": None,
    "defects": [],
    "metadata": {},
}
_QUALITY_DEFAULTS: dict[str, Any] = {
    "scope": "INSPECTION",
    "inspection_id": None,
    "batch_id": None,
    "chip_id": None,
    "event_date": None,
    "defect_type": None,
    "rule": None,
    "threshold": None,
    "observed_value": None,
    "quality_score": None,
    "pass_fail": None,
    "alert_level": None,
    "metadata": {},
}


def utc_millis(moment: datetime | None = None) -> datetime:
    """``moment`` (default now) in UTC, truncated to whole milliseconds."""
    if moment.__class__ is datetime and moment.tzinfo is UTC and not moment.microsecond % 1000:
        return moment  # already UTC milliseconds (e.g. a re-published event)
    moment = moment or datetime.now(UTC)
    if moment.tzinfo is None:
        raise EventValidationError("event_time", "must be timezone-aware (UTC)")
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").fullmatch


def _event_id(event_id: str | uuid.UUID | None) -> str:
    if event_id is None:
        return str(uuid.uuid4())
    if event_id.__class__ is str and _CANONICAL_UUID(event_id):
        return event_id  # already what str(uuid.UUID(...)) gives
    try:
        return str(event_id if isinstance(event_id, uuid.UUID) else uuid.UUID(str(event_id)))
    except ValueError:
        raise EventValidationError("event_id", f"{event_id!r} is not a UUID") from None


def complete_event(partial: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Fill event_id, event_time (ms, UTC), correlation_id and optional fields of a partial event dict."""
    event = {**defaults, **partial}
    event["event_id"] = _event_id(event.get("event_id"))
    event_time = event.get("event_time")
    event["event_time"] = (
        utc_millis(event_time) if event_time is None or isinstance(event_time, datetime) else event_time
    )
    event["correlation_id"] = current_correlation_id(event.get("correlation_id"))
    event["metadata"] = dict(event.get("metadata") or {})
    return event


def complete_inspection_event(partial: Mapping[str, Any]) -> dict[str, Any]:
    return complete_event(partial, _INSPECTION_DEFAULTS)


def complete_quality_event(partial: Mapping[str, Any]) -> dict[str, Any]:
    return complete_event(partial, _QUALITY_DEFAULTS)


def _defects(defects: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    out = []
    for defect in defects or []:
        item = dict(defect)
        location = item.get("location")
        if isinstance(location, Mapping):
            item["location"] = dict(location)
        elif isinstance(location, Sequence) and not isinstance(location, str) and len(location) == 2:
            item["location"] = {"x": location[0], "y": location[1]}  # (x, y) pairs are common in service code
        out.append(item)
    return out


def inspection_event(
    event_type: str,
    *,
    inspection_id: str,
    batch_id: str,
    chip_id: str,
    inspection_type: str,
    status: str,
    quality_score: float | None = None,
    defects: Sequence[Mapping[str, Any]] | None = None,
    metadata: Mapping[str, str] | None = None,
    wafer_id: str | None = None,
    station_id: str | None = None,
    event_id: str | uuid.UUID | None = None,
    event_time: datetime | None = None,
    correlation_id: str | None = None,
) -> dict[str, Any]:
    """A complete InspectionEvent dict."""
    return complete_inspection_event(
        {
            "event_id": event_id,
            "event_type": event_type,
            "event_time": event_time,
            "correlation_id": correlation_id,
            "inspection_id": inspection_id,
            "batch_id": batch_id,
            "chip_id": chip_id,
            "wafer_id": wafer_id,
            "station_id": station_id,
            "inspection_type": inspection_type,
            "status": status,
            "quality_score": quality_score,
            "defects": _defects(defects),
            "metadata": metadata,
        }
    )


def infer_scope(inspection_id: str | None, batch_id: str | None, event_date: str | date | None) -> str:
    if inspection_id:
        return "INSPECTION"
    if batch_id:
        return "LOT"
    if event_date:
        return "DAY"
    raise EventValidationError("scope", "needs inspection_id (INSPECTION), batch_id (LOT) or event_date (DAY)")


def quality_event(event_type: str, **fields: Any) -> dict[str, Any]:
    """A complete QualityEvent dict; checks that the ids fit the scope."""
    event_date = fields.get("event_date")
    if isinstance(event_date, date):
        fields["event_date"] = event_date.isoformat()
    scope = fields.get("scope") or infer_scope(fields.get("inspection_id"), fields.get("batch_id"), event_date)
    fields["scope"] = scope
    if scope == "INSPECTION" and not fields.get("inspection_id"):
        raise EventValidationError("inspection_id", "is required for scope INSPECTION")
    if scope in ("LOT", "DAY") and fields.get("inspection_id"):
        raise EventValidationError("inspection_id", f"must be null for scope {scope}")
    if scope == "LOT" and not fields.get("batch_id"):
        raise EventValidationError("batch_id", "is required for scope LOT")
    if scope == "DAY":
        try:
            date.fromisoformat(str(fields.get("event_date")))
        except ValueError:
            raise EventValidationError("event_date", "is required as YYYY-MM-DD for scope DAY") from None
    return complete_quality_event({"event_type": event_type, **fields})


def threshold_cleared_event(
    inspection_id: str | None = None,
    batch_id: str | None = None,
    *,
    rule: str,
    threshold: float | None = None,
    observed_value: float | None = None,
    alert_level: str | None = None,
    scope: str | None = None,
    event_date: str | date | None = None,
    defect_type: str | None = None,
    chip_id: str | None = None,
    quality_score: float | None = None,
    metadata: Mapping[str, str] | None = None,
    event_id: str | uuid.UUID | None = None,
    event_time: datetime | None = None,
    correlation_id: str | None = None,
) -> dict[str, Any]:
    """A complete THRESHOLD_CLEARED event (quality schema v3): ``rule`` no longer breaks on this subject.

    The subject (inspection, lot or day and defect type) and ``rule`` are those of the
    THRESHOLD_VIOLATED it ends; ``alert_level`` is the highest level that was raised,
    ``observed_value`` the value now back within ``threshold``.
    """
    if not rule:
        raise EventValidationError("rule", "is required: a clearance ends the violation of one rule")
    return quality_event(
        "THRESHOLD_CLEARED",
        inspection_id=inspection_id,
        batch_id=batch_id,
        chip_id=chip_id,
        scope=scope,
        event_date=event_date,
        defect_type=defect_type,
        rule=rule,
        threshold=threshold,
        observed_value=observed_value,
        quality_score=quality_score,
        pass_fail=True,
        alert_level=alert_level,
        metadata=metadata,
        event_id=event_id,
        event_time=event_time,
        correlation_id=correlation_id,
    )


def quality_key(event: Mapping[str, Any]) -> str:
    """Kafka key of a quality event: the lot, else the inspection, else the day (ordering per lot)."""
    return str(event.get("batch_id") or event.get("inspection_id") or event.get("event_date") or event["event_id"])


def inspection_key(event: Mapping[str, Any]) -> str:
    return str(event["inspection_id"])
