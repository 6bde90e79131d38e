"""Check an event against its Avro schema and the fab's rules, naming the field.

fastavro's own validation says *that* a record is wrong; producers need to say
*which* field (``defects[0].severity``) before anything is sent. Business rules
on top of the schema: scores and confidences lie in [0, 1], no double is NaN
or infinite, timestamps are timezone-aware, ``uuid`` strings parse, and
identifiers (lot, chip, inspection, wafer, station, recipe ids) are not blank and
hold no control character (they become keys and partition names downstream).

Each schema is compiled once into nested checks (producers validate every
event, so this sits on the publish path); the field path is only assembled
when something is wrong.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from chipq_pipelines.events.errors import EventValidationError

#: Fields (at any depth) whose value must lie in [0, 1].
UNIT_INTERVAL_FIELDS = frozenset({"quality_score", "confidence"})
#: String fields (at any depth) that identify something: never blank, never a control character.
IDENTIFIER_FIELDS = frozenset({"inspection_id", "batch_id", "chip_id", "wafer_id", "station_id", "recipe_id"})
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")

Check = Callable[[Any], None]


class _Invalid(Exception):
    def __init__(self, reason: str, part: str = "") -> None:
        self.parts = [part] if part else []
        self.reason = reason


def validate_event(schema: dict[str, Any], event: Any) -> None:
    """Raise ``EventValidationError`` naming the first offending field; return None when valid."""
    compile_validator(schema)(event)


def compile_validator(schema: dict[str, Any]) -> Callable[[Any], None]:
    """A function that raises ``EventValidationError`` naming the field when an event is invalid.

    Two compiled forms of the same rules: a flat generated predicate that only
    answers "certainly valid" (the common case, a few microseconds), and the
    nested checks that name the offending field. An event the predicate does
    not vouch for goes through the nested checks, which alone decide what is
    rejected and how; the predicate accepts a subset of what they accept.
    """
    schema_json = json.dumps(schema, sort_keys=True)
    check = _compiled(schema_json)
    surely_valid = _fast_compiled(schema_json)
    record_name = str(schema.get("name", "event"))

    def validate(event: Any) -> None:
        try:
            if surely_valid(event):
                return
        except Exception:  # an odd value the predicate did not expect: let the full checks judge it
            pass
        try:
            check(event)
        except _Invalid as exc:
            raise EventValidationError("".join(exc.parts).lstrip(".") or record_name, exc.reason) from None

    return validate


@lru_cache(maxsize=64)
def _compiled(schema_json: str) -> Check:
    return _Compiler().build(json.loads(schema_json), None, "")


@lru_cache(maxsize=64)
def _fast_compiled(schema_json: str) -> Callable[[Any], bool]:
    return _FastCompiler().compile(json.loads(schema_json))


def _full_name(schema: dict[str, Any], namespace: str | None) -> tuple[str, str | None]:
    """A named type's full name and the namespace its fields inherit."""
    name = str(schema["name"])
    space = schema.get("namespace", namespace)
    full = name if "." in name or not space else f"{space}.{name}"
    return full, full.rpartition(".")[0] or None


class _Compiler:
    def __init__(self) -> None:
        self.named: dict[str, Check] = {}

    def _name(self, schema: dict[str, Any], namespace: str | None) -> tuple[str, str | None]:
        return _full_name(schema, namespace)

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
    if kind == "string" and leaf in IDENTIFIER_FIELDS:

        def check_identifier(value: Any) -> None:
            if not isinstance(value, str):
                raise _Invalid(f"expected string, got {type(value).__name__} {value!r}")
            if not value.strip():
                raise _Invalid(f"must not be blank, got {value!r}")
            if _CONTROL.search(value):
                raise _Invalid(f"must not contain control characters, got {value!r}")

        return check_identifier

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


# ------------------------------------------------------------ fast path

_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}").fullmatch


def _uuid_ok(value: Any) -> bool:
    """True only for values ``_uuid`` accepts (others are left to it)."""
    return (value.__class__ is str and _CANONICAL_UUID(value) is not None) or isinstance(value, uuid.UUID)


def _timestamp_ok(value: Any) -> bool:
    """True only for values ``_timestamp`` accepts."""
    if isinstance(value, datetime):
        return value.tzinfo is not None and value.utcoffset() is not None
    return value.__class__ is int


class _FastCompiler:
    """Generate one flat Python predicate per schema: True means the nested checks would pass.

    Conservative by construction: exact classes only (``dict``, ``str``,
    ``float``…), so subclasses, ints for doubles and other rarities answer
    False and are judged by the nested checks. Each type becomes a rejection
    expression over a local variable, or a generated function for records,
    arrays, maps and named references.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.globals: dict[str, Any] = {
            "_uuid_ok": _uuid_ok,
            "_timestamp_ok": _timestamp_ok,
            "_datetime": datetime,
            "_UTC": UTC,
        }
        self.named: dict[str, str] = {}  # full and short names -> generated function name
        self.counter = 0

    def _new(self, prefix: str) -> str:
        self.counter += 1
        return f"_{prefix}{self.counter}"

    def _constant(self, value: Any) -> str:
        name = self._new("c")
        self.globals[name] = value
        return name

    def compile(self, schema: Any) -> Callable[[Any], bool]:
        reject = self.build(schema, None, "")
        self.lines += ["def _root(x):", f"    return not ({reject.format(x='x')})"]
        source = "\n".join(self.lines)
        namespace = dict(self.globals)
        namespace["_named"] = {}
        exec(compile(source, "<chipq-fast-validator>", "exec"), namespace)  # source generated above from the schema
        namespace["_named"].update({name: namespace[fn] for name, fn in self.named.items()})
        root: Callable[[Any], bool] = namespace["_root"]
        return root

    def build(self, schema: Any, namespace: str | None, leaf: str) -> str:
        """A rejection expression with an ``{x}`` placeholder (True: not certainly valid)."""
        if isinstance(schema, list):
            branches = [self.build(b, namespace, leaf) for b in schema]
            every_branch_rejects = " and ".join(f"({b})" for b in branches) or "True"
            if "null" in schema:
                return f"({{x}} is not None and {every_branch_rejects})"
            return f"({{x}} is None or {every_branch_rejects})"
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return self._primitive(schema, leaf)
            return f"not _named[{schema!r}]({{x}})"
        kind = schema["type"]
        logical = schema.get("logicalType")
        if kind == "record":
            return f"not {self._record(schema, namespace)}({{x}})"
        if kind == "enum":
            symbols = self._constant(frozenset(schema["symbols"]))
            return self._named_expr(schema, namespace, f"({{x}}.__class__ is not str or {{x}} not in {symbols})")
        if kind == "array":
            return f"not {self._loop(schema['items'], namespace, leaf, mapping=False)}({{x}})"
        if kind == "map":
            return f"not {self._loop(schema['values'], namespace, leaf, mapping=True)}({{x}})"
        if kind == "fixed":
            size = int(schema["size"])
            return self._named_expr(schema, namespace, f"({{x}}.__class__ is not bytes or len({{x}}) != {size})")
        if logical in ("timestamp-millis", "timestamp-micros"):
            return "not ({x}.__class__ is _datetime and {x}.tzinfo is _UTC or _timestamp_ok({x}))"
        if logical == "uuid":
            return "not _uuid_ok({x})"
        return self.build(kind, namespace, leaf)

    @staticmethod
    def _primitive(kind: str, leaf: str) -> str:
        if kind == "null":
            return "{x} is not None"
        if kind in ("float", "double"):
            if leaf in UNIT_INTERVAL_FIELDS:
                return "({x}.__class__ is not float or not 0.0 <= {x} <= 1.0)"
            return "({x}.__class__ is not float or {x} - {x} != 0.0)"  # NaN and infinities
        python_type = {"boolean": "bool", "int": "int", "long": "int", "string": "str", "bytes": "bytes"}[kind]
        if kind == "string" and leaf in IDENTIFIER_FIELDS:
            # not printable (control characters, but also other separators): the nested checks decide
            return "({x}.__class__ is not str or not {x}.strip() or not {x}.isprintable())"
        return f"{{x}}.__class__ is not {python_type}"

    def _named_expr(self, schema: dict[str, Any], namespace: str | None, reject: str) -> str:
        """Register a named enum/fixed as a function (it may be referred to by name) and inline it here."""
        fn = self._new("n")
        self.lines += [f"def {fn}(x):", f"    return not {reject.format(x='x')}"]
        self._register(schema, namespace, fn)
        return reject

    def _register(self, schema: dict[str, Any], namespace: str | None, fn: str) -> None:
        full, _ = _full_name(schema, namespace)
        self.named[full] = self.named[str(schema["name"])] = fn

    def _loop(self, items: Any, namespace: str | None, leaf: str, *, mapping: bool) -> str:
        reject = self.build(items, namespace, leaf).format(x="y")
        fn = self._new("m" if mapping else "a")
        if mapping:
            body = [
                f"def {fn}(x):",
                "    if x.__class__ is not dict:",
                "        return False",
                "    for k, y in x.items():",
                f"        if k.__class__ is not str or {reject}:",
                "            return False",
                "    return True",
            ]
        else:
            body = [
                f"def {fn}(x):",
                "    if x.__class__ is not list and x.__class__ is not tuple:",
                "        return False",
                "    for y in x:",
                f"        if {reject}:",
                "            return False",
                "    return True",
            ]
        self.lines += body
        return fn

    def _record(self, schema: dict[str, Any], namespace: str | None) -> str:
        fn = self._new("r")
        self._register(schema, namespace, fn)  # before the fields: they may refer to it
        _, space = _full_name(schema, namespace)
        known = self._constant(frozenset(f["name"] for f in schema["fields"]))
        body = [f"def {fn}(x):", f"    if x.__class__ is not dict or not {known}.issuperset(x):"]
        body.append("        return False")
        for fld in schema["fields"]:
            reject = self.build(fld["type"], space, fld["name"]).format(x="y")
            body += [f"    if {fld['name']!r} in x:", f"        y = x[{fld['name']!r}]", f"        if {reject}:"]
            body += ["            return False"]
            if "default" not in fld:
                body += ["    else:", "        return False"]
        body.append("    return True")
        self.lines += body
        return fn
