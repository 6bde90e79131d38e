"""Check an event against its Avro schema and the fab's rules, naming the field.

fastavro's own validation says *that* a record is wrong; producers need to say
*which* field (``defects[0].severity``) before anything is sent. Business rules
on top of the schema: scores and confidences lie in [0, 1], no double is NaN
or infinite, timestamps are timezone-aware, ``uuid`` strings parse.

Each schema is compiled once into nested checks (producers validate every
event, so this sits on the publish path); the field path is only assembled
when something is wrong.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from chipq_pipelines.events.errors import EventValidationError

#: Fields (at any depth) whose value must lie in [0, 1].
UNIT_INTERVAL_FIELDS = frozenset({"quality_score", "confidence"})

Check = Callable[[Any], None]


class _Invalid(Exception):
    def __init__(self, reason: str, part: str = "") -> None:
        self.parts = [part] if part else []
        self.reason = reason


def validate_event(schema: dict[str, Any], event: Any) -> None:
    """Raise ``EventValidationError`` naming the first offending field; return None when valid."""
    compile_validator(schema)(event)


def compile_validator(schema: dict[str, Any]) -> Callable[[Any], None]:
    """A function that raises ``EventValidationError`` naming the field when an event is invalid."""
    check = _compiled(json.dumps(schema, sort_keys=True))
    record_name = str(schema.get("name", "event"))

    def validate(event: Any) -> None:
        try:
            check(event)
        except _Invalid as exc:
            raise EventValidationError("".join(exc.parts).lstrip(".") or record_name, exc.reason) from None

    return validate


@lru_cache(maxsize=64)
def _compiled(schema_json: str) -> Check:
    return _Compiler().build(json.loads(schema_json), None, "")


class _Compiler:
    def __init__(self) -> None:
        self.named: dict[str, Check] = {}

    def _name(self, schema: dict[str, Any], namespace: str | None) -> tuple[str, str | None]:
        name = str(schema["name"])
        space = schema.get("namespace", namespace)
        full = name if "." in name or not space else f"{space}.{name}"
        return full, full.rpartition(".")[0] or None

    def _register(self, schema: dict[str, Any], namespace: str | None, check: Check) -> None:
        full, _ = self._name(schema, namespace)
        self.named[full] = self.named[str(schema["name"])] = check

    def build(self, schema: Any, namespace: str | None, leaf: str) -> Check:
        if isinstance(schema, list):
            return self._union([self.build(b, namespace, leaf) for b in schema], "null" in schema)
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return _primitive(schema, leaf)
            table = self.named
            return lambda value: table[schema](value)  # a reference to a named type (maybe recursive)
        kind = schema["type"]
        logical = schema.get("logicalType")
        if kind == "record":
            return self._record(schema, namespace)
        if kind == "enum":
            symbols = frozenset(schema["symbols"])
            listed = ", ".join(schema["symbols"])

            def check_enum(value: Any) -> None:
                if value not in symbols or not isinstance(value, str):
                    raise _Invalid(f"{value!r} is not one of {listed}")

            self._register(schema, namespace, check_enum)
            return check_enum
        if kind == "array":
            return _array(self.build(schema["items"], namespace, leaf))
        if kind == "map":
            return _map(self.build(schema["values"], namespace, leaf))
        if kind == "fixed":
            size = schema["size"]

            def check_fixed(value: Any) -> None:
                if not isinstance(value, bytes) or len(value) != size:
                    raise _Invalid(f"expected {size} bytes")

            self._register(schema, namespace, check_fixed)
            return check_fixed
        if logical in ("timestamp-millis", "timestamp-micros"):
            return _timestamp
        if logical == "uuid":
            return _uuid
        return self.build(kind, namespace, leaf)

    def _record(self, schema: dict[str, Any], namespace: str | None) -> Check:
        fields: list[tuple[str, Check, bool]] = []
        known = frozenset(f["name"] for f in schema["fields"])
        record_name = schema["name"]

        def check_record(value: Any) -> None:
            if not isinstance(value, Mapping):
                raise _Invalid(f"expected a mapping, got {type(value).__name__}")
            for name, check, has_default in fields:
                if name in value:
                    try:
                        check(value[name])
                    except _Invalid as exc:
                        exc.parts.insert(0, "." + name)
                        raise
                elif not has_default:
                    raise _Invalid("is required", "." + name)
            if not known.issuperset(value):
                extra = next(k for k in value if k not in known)
                raise _Invalid(f"is not a field of {record_name}", f".{extra}")

        self._register(schema, namespace, check_record)  # before the fields: they may refer to it
        _, space = self._name(schema, namespace)
        for fld in schema["fields"]:
            fields.append((fld["name"], self.build(fld["type"], space, fld["name"]), "default" in fld))
        return check_record

    @staticmethod
    def _union(branches: list[Check], nullable: bool) -> Check:
        def check_union(value: Any) -> None:
            if value is None:
                if nullable:
                    return
                raise _Invalid("is required (null is not allowed)")
            errors: list[_Invalid] = []
            for branch in branches:
                try:
                    branch(value)
                    return
                except _Invalid as exc:
                    errors.append(exc)
            relevant = [e for e in errors if e.reason != "expected null"]
            if len(relevant) == 1:
                raise relevant[0]
            raise _Invalid(f"{value!r} matches no type of the union")

        return check_union


_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "string", "bytes"})


def _primitive(kind: str, leaf: str) -> Check:
    if kind == "null":

        def check_null(value: Any) -> None:
            if value is not None:
                raise _Invalid("expected null")

        return check_null
    if kind in ("float", "double"):
        unit = leaf in UNIT_INTERVAL_FIELDS

        def check_number(value: Any) -> None:
            if value.__class__ is not float and (not isinstance(value, int | float) or isinstance(value, bool)):
                raise _Invalid(f"expected {kind}, got {type(value).__name__} {value!r}")
            if not math.isfinite(value):
                raise _Invalid(f"must be a finite number, got {value!r}")
            if unit and not 0.0 <= value <= 1.0:
                raise _Invalid(f"must lie in [0, 1], got {value!r}")

        return check_number
    python_type: type | tuple[type, ...] = {"boolean": bool, "int": int, "long": int, "string": str, "bytes": bytes}[
        kind
    ]

    def check_simple(value: Any) -> None:
        if not isinstance(value, python_type) or (kind in ("int", "long") and isinstance(value, bool)):
            raise _Invalid(f"expected {kind}, got {type(value).__name__} {value!r}")

    return check_simple


def _array(item: Check) -> Check:
    def check_array(value: Any) -> None:
        if not isinstance(value, list | tuple):
            raise _Invalid(f"expected a list, got {type(value).__name__}")
        for index, element in enumerate(value):
            try:
                item(element)
            except _Invalid as exc:
                exc.parts.insert(0, f"[{index}]")
                raise

    return check_array


def _map(values: Check) -> Check:
    def check_map(value: Any) -> None:
        if not isinstance(value, Mapping):
            raise _Invalid(f"expected a mapping, got {type(value).__name__}")
        for key, element in value.items():
            if not isinstance(key, str):
                raise _Invalid(f"map key {key!r} is not a string")
            try:
                values(element)
            except _Invalid as exc:
                exc.parts.insert(0, f"[{key!r}]")
                raise

    return check_map


def _timestamp(value: Any) -> None:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise _Invalid("must be timezone-aware (UTC)")
    elif not isinstance(value, int) or isinstance(value, bool):
        raise _Invalid(f"expected a datetime, got {type(value).__name__}")


def _uuid(value: Any) -> None:
    if isinstance(value, uuid.UUID):
        return
    if not isinstance(value, str):
        raise _Invalid(f"expected a UUID string, got {type(value).__name__}")
    try:
        uuid.UUID(value)
    except ValueError:
        raise _Invalid(f"{value!r} is not a UUID") from None
