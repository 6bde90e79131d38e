"""Checks the Avro schema cannot express: identifiers, score ranges, NaN, absurd event times.

Each check returns ``None`` for a good event, or the reason it is rejected.
Identifiers (event, inspection, lot and chip ids) become keys: of mart
partitions, Dagster partitions, Kafka messages and terminal output. One that is
blank, whitespace only or holds a control character cannot be any of those, so
the event is rejected with the reason instead of landing as a lot nobody can name.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from typing import Any

from chipq_pipelines.warehouse.types import Event, KafkaCoordinates, RejectedRecord, ValidationBounds

INSPECTION_EVENT_TYPES = frozenset({"INSPECTION_CREATED", "INSPECTION_COMPLETED"})
QUALITY_EVENT_TYPES = frozenset({"QUALITY_ASSESSED", "THRESHOLD_VIOLATED", "THRESHOLD_CLEARED"})
QUALITY_SCOPES = frozenset({"INSPECTION", "LOT", "DAY"})
SEVERITIES = frozenset({"LOW", "MEDIUM", "HIGH", "CRITICAL"})
ALERT_LEVELS = frozenset({"WARNING", "CRITICAL"})
#: C0 and C1 control characters and DEL (Unicode category Cc): never part of an identifier.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")
#: The same class for RE2 (pyarrow.compute), which ingest's column-wise check uses.
CONTROL_CHARACTERS_RE2 = "[\\x{00}-\\x{1f}\\x{7f}-\\x{9f}]"
#: Identifier fields of each event kind: required ones must be non-blank; no identifier may hold a control character.
INSPECTION_IDS = ("event_id", "inspection_id", "batch_id", "chip_id")
INSPECTION_OPTIONAL_IDS = ("wafer_id", "station_id", "recipe_id")
QUALITY_IDS = ("event_id",)
QUALITY_OPTIONAL_IDS = ("inspection_id", "batch_id", "chip_id")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _unit_interval_problem(name: str, value: Any, *, nullable: bool) -> str | None:
    if value is None:
        return None if nullable else f"{name} is missing"
    if not _is_number(value):
        return f"{name} is not a number: {value!r}"
    if math.isnan(value):
        return f"{name} is NaN"
    if not 0.0 <= value <= 1.0:
        return f"{name} {value!r} is outside [0, 1]"
    return None


def _event_time_problem(event: Event, ingested_at: dt.datetime, bounds: ValidationBounds) -> str | None:
    event_time = event.get("event_time")
    if not isinstance(event_time, dt.datetime):
        return f"event_time is not a datetime: {event_time!r}"
    if event_time.tzinfo is None:
        return "event_time has no time zone (expected a UTC-aware datetime)"
    if event_time < bounds.earliest_event_time:
        return f"event_time {event_time.isoformat()} is before {bounds.earliest_event_time.isoformat()}"
    if event_time > ingested_at + bounds.max_future:
        return (
            f"event_time {event_time.isoformat()} is more than {bounds.max_future} "
            f"after ingest ({ingested_at.isoformat()})"
        )
    return None


def _required_strings_problem(event: Event, names: tuple[str, ...]) -> str | None:
    for name in names:
        if not isinstance(event.get(name), str):
            return f"{name} is missing or not a string"
    return None


def _optional_strings_problem(event: Event, names: tuple[str, ...]) -> str | None:
    for name in names:
        value = event.get(name)
        if value is not None and not isinstance(value, str):
            return f"{name} is not a string: {value!r}"
    return None


def identifier_problem(name: str, value: str, *, required: bool = True) -> str | None:
    """Why ``value`` cannot serve as identifier ``name``, or ``None``."""
    if required and not value.strip():
        return f"{name} is blank" if not value else f"{name} is whitespace only ({value!r})"
    if CONTROL_CHARACTERS.search(value):
        return f"{name} holds a control character: {value!r}"
    return None


def _identifiers_problem(event: Event, required: tuple[str, ...], optional: tuple[str, ...]) -> str | None:
    for name in required:
        problem = identifier_problem(name, event[name])
        if problem:
            return problem
    for name in optional:
        value = event.get(name)
        problem = identifier_problem(name, value, required=False) if value is not None else None
        if problem:
            return problem
    return None


def _metadata_problem(event: Event) -> str | None:
    metadata = event.get("metadata") or {}
    if not isinstance(metadata, dict):
        return "metadata is not a map"
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        return "metadata is not a map of strings"
    return None


def inspection_event_problem(event: Event, ingested_at: dt.datetime, bounds: ValidationBounds) -> str | None:
    """Why a decoded inspection event cannot land in ``raw.inspection_events``, or ``None``."""
    problem = _required_strings_problem(event, ("event_id", "inspection_id", "batch_id", "chip_id"))
    problem = problem or _required_strings_problem(event, ("inspection_type", "status"))
    problem = problem or _optional_strings_problem(event, ("correlation_id", *INSPECTION_OPTIONAL_IDS))
    problem = problem or _identifiers_problem(event, INSPECTION_IDS, INSPECTION_OPTIONAL_IDS)
    if problem:
        return problem
    if event.get("event_type") not in INSPECTION_EVENT_TYPES:
        return f"event_type {event.get('event_type')!r} is not an inspection event type"
    problem = _event_time_problem(event, ingested_at, bounds) or _metadata_problem(event)
    problem = problem or _unit_interval_problem("quality_score", event.get("quality_score"), nullable=True)
    if problem:
        return problem
    defects = event.get("defects") or []
    if not isinstance(defects, list):
        return "defects is not a list"
    for index, defect in enumerate(defects):
        problem = _defect_problem(defect)
        if problem:
            return f"defects[{index}]: {problem}"
    return None


def _defect_problem(defect: Any) -> str | None:
    if not isinstance(defect, dict):
        return "not a record"
    if not isinstance(defect.get("defect_type"), str):
        return "defect_type is missing or not a string"
    if defect.get("severity") not in SEVERITIES:
        return f"severity {defect.get('severity')!r} is not one of {sorted(SEVERITIES)}"
    problem = _unit_interval_problem("confidence", defect.get("confidence"), nullable=False)
    if problem:
        return problem
    location = defect.get("location")
    if not isinstance(location, dict):
        return "location is missing"
    for axis in ("x", "y"):
        value = location.get(axis)
        if not _is_number(value) or not math.isfinite(float(value)):  # type: ignore[arg-type]
            return f"location.{axis} is not a finite number: {value!r}"
    return None


def quality_event_problem(event: Event, ingested_at: dt.datetime, bounds: ValidationBounds) -> str | None:
    """Why a decoded quality event cannot land in ``raw.quality_events``, or ``None``."""
    problem = _required_strings_problem(event, ("event_id",))
    problem = problem or _optional_strings_problem(
        event, ("correlation_id", *QUALITY_OPTIONAL_IDS, "defect_type", "rule", "model_version")
    )
    problem = problem or _identifiers_problem(event, QUALITY_IDS, QUALITY_OPTIONAL_IDS)
    if problem:
        return problem
    if event.get("event_type") not in QUALITY_EVENT_TYPES:
        return f"event_type {event.get('event_type')!r} is not a quality event type"
    if event.get("scope", "INSPECTION") not in QUALITY_SCOPES:
        return f"scope {event.get('scope')!r} is not one of {sorted(QUALITY_SCOPES)}"
    alert_level = event.get("alert_level")
    if alert_level is not None and alert_level not in ALERT_LEVELS:
        return f"alert_level {alert_level!r} is not one of {sorted(ALERT_LEVELS)}"
    problem = _event_time_problem(event, ingested_at, bounds) or _metadata_problem(event)
    problem = problem or _unit_interval_problem("quality_score", event.get("quality_score"), nullable=True)
    if problem:
        return problem
    for name in ("threshold", "observed_value"):
        value = event.get(name)
        if value is not None and (not _is_number(value) or math.isnan(value)):
            return f"{name} is not a number: {value!r}"
    event_date = event.get("event_date")
    if event_date is not None:
        try:
            dt.date.fromisoformat(event_date)
        except (TypeError, ValueError):
            return f"event_date {event_date!r} is not YYYY-MM-DD"
    return None


def rejected_from_event(event: Event, coordinates: KafkaCoordinates, reason: str) -> RejectedRecord:
    """A rejected record for an event that decoded but failed validation.

    Keeps the bytes as read when the caller passed them in ``coordinates.value``;
    otherwise the decoded event as JSON, so what came in is still inspectable.
    """
    raw = coordinates.value
    if raw is None:
        raw = json.dumps(event, default=str, sort_keys=True).encode("utf-8")
    return RejectedRecord(
        topic=coordinates.topic,
        partition=coordinates.partition,
        offset=coordinates.offset,
        key=coordinates.key,
        raw=raw,
        reason=f"validation: {reason}",
    )
