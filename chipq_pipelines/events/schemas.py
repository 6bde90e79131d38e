"""The versioned Avro schemas in ``schemas/``, known by name, version and fingerprint.

``inspection.avsc`` is version 1 of ``inspection``; ``inspection.v2.avsc`` is
version 2. Each is identified on the wire by its CRC-64-AVRO fingerprint of
the parsing canonical form (Avro single-object encoding).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

from chipq_pipelines.paths import REPO_ROOT

SCHEMAS_DIR = REPO_ROOT / "schemas"
INSPECTION = "inspection"
QUALITY = "quality"
_FILE_NAME = re.compile(r"(?P<name>[a-z0-9_\-]+?)(?:\.v(?P<version>\d+))?\.avsc")


class SchemaRef(NamedTuple):
    """Which schema wrote (or reads) a record: ``("inspection", 2, "com.chipquality.events.InspectionEvent")``."""

    name: str
    version: int
    fullname: str

    @property
    def label(self) -> str:
        return f"{self.name}.v{self.version}"


def _strip_uuid_logical_type(schema: Any) -> Any:
    """Read ``uuid`` strings as ``str`` (fastavro would build ``uuid.UUID``); the wire is the same."""
    if isinstance(schema, dict):
        out = {k: _strip_uuid_logical_type(v) for k, v in schema.items()}
        if out.get("logicalType") == "uuid":
            del out["logicalType"]
        return out
    if isinstance(schema, list):
        return [_strip_uuid_logical_type(s) for s in schema]
    return schema


def schema_fingerprint(schema: dict[str, Any]) -> bytes:
    """8-byte CRC-64-AVRO fingerprint as it goes on the wire (little-endian)."""
    canonical = to_parsing_canonical_form(schema)
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


def record_fullname(schema: dict[str, Any]) -> str:
    name = str(schema["name"])
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


@dataclass(frozen=True)
class KnownSchema:
    """One schema version: its JSON, its fastavro-parsed form and its fingerprint."""

    ref: SchemaRef
    schema: dict[str, Any]
    fingerprint: bytes
    parsed: Any = field(repr=False, compare=False)

    @classmethod
    def from_schema(cls, schema: dict[str, Any], name: str, version: int) -> KnownSchema:
        parsed = parse_schema(_strip_uuid_logical_type(schema), named_schemas={})
        ref = SchemaRef(name, version, record_fullname(schema))
        return cls(ref=ref, schema=schema, fingerprint=schema_fingerprint(schema), parsed=parsed)


class SchemaCatalog:
    """Every schema file of a folder, by fingerprint and by (name, version)."""

    def __init__(self, schemas: list[KnownSchema]) -> None:
        self._by_fingerprint = {s.fingerprint: s for s in schemas}
        self._by_ref = {(s.ref.name, s.ref.version): s for s in schemas}

    @classmethod
    def from_dir(cls, directory: Path) -> SchemaCatalog:
        known = []
        for path in sorted(directory.glob("*.avsc")):
            match = _FILE_NAME.fullmatch(path.name)
            if match is None:
                continue
            version = int(match["version"] or 1)
            known.append(KnownSchema.from_schema(json.loads(path.read_text()), match["name"], version))
        return cls(known)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_ref.values())

    def by_fingerprint(self, fp: bytes) -> KnownSchema | None:
        return self._by_fingerprint.get(fp)

    def get(self, name: str, version: int | None = None) -> KnownSchema:
        """A schema by name; the latest version when ``version`` is None."""
        if version is None:
            versions = [v for (n, v) in self._by_ref if n == name]
            if not versions:
                raise KeyError(f"no schema named {name!r}")
            version = max(versions)
        return self._by_ref[(name, version)]

    def resolve(self, schema: dict[str, Any]) -> KnownSchema:
        """The catalog entry with this schema's fingerprint, else an ad-hoc entry (version 0)."""
        known = self._by_fingerprint.get(schema_fingerprint(schema))
        if known is not None:
            return known
        return KnownSchema.from_schema(schema, str(schema.get("name", "schema")).lower(), 0)


@cache
def default_catalog() -> SchemaCatalog:
    """The catalog of ``schemas/`` in this repository (parsed once per process)."""
    return SchemaCatalog.from_dir(SCHEMAS_DIR)


def load_schema(name: str, version: int | None = None) -> dict[str, Any]:
    """The JSON of a schema in ``schemas/`` (latest version by default)."""
    return default_catalog().get(name, version).schema
