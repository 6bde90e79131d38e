"""One Avro serializer/decoder pair for every event type.

Wire formats:

* Avro single-object encoding (no registry): ``0xC3 0x01`` + 8-byte
  CRC-64-AVRO fingerprint (little-endian) + Avro binary body.
* Confluent framing (``SCHEMA_REGISTRY_URL`` set): ``0x00`` + 4-byte big-endian
  schema id + Avro binary body, ids from ``confluent_kafka.schema_registry``.

Decoding accepts both, knows every schema file in ``schemas/`` by fingerprint,
and resolves the writer's schema to the reader's (v1 data read as v2 and back).
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.errors import (
    DeserializationError,
    EventValidationError,
    SchemaNotFoundError,
    SerializationError,
)
from chipq_pipelines.events.schemas import KnownSchema, SchemaCatalog, SchemaRef, default_catalog
from chipq_pipelines.events.validation import compile_validator

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0
SINGLE_OBJECT = "single-object"
CONFLUENT = "confluent"

_registry_lock = threading.Lock()
_registry_clients: dict[str, Any] = {}


def registry_client(config: KafkaConfig) -> Any:
    """One ``SchemaRegistryClient`` per URL and process (``mock://`` ones share their store this way)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    conf = config.schema_registry_config()
    with _registry_lock:
        client = _registry_clients.get(conf["url"])
        if client is None:
            client = SchemaRegistryClient.new_client(conf)
            _registry_clients[conf["url"]] = client
        return client


@dataclass(frozen=True)
class _ReadPlan:
    writer: Any
    reader: Any  # None: read as written
    ref: SchemaRef


SchemaLike = dict[str, Any] | str | Path


def _as_schema(schema: SchemaLike) -> dict[str, Any]:
    if isinstance(schema, Path):
        return dict(json.loads(schema.read_text()))
    if isinstance(schema, str):
        return dict(json.loads(schema))
    return schema


class AvroSerializer:
    """Encode events of one schema; decode records of any known schema.

    ``schema`` is the writer schema for ``serialize`` and the reader schema for
    records of the same record name; ``readers`` adds reader schemas for other
    record names (records of other names are returned as written).
    """

    def __init__(
        self,
        schema: SchemaLike | None = None,
        *,
        readers: list[SchemaLike] | None = None,
        config: KafkaConfig | None = None,
        catalog: SchemaCatalog | None = None,
    ) -> None:
        self._catalog = catalog or default_catalog()
        self._config = config
        self.schema: KnownSchema | None = self._catalog.resolve(_as_schema(schema)) if schema is not None else None
        self._readers: dict[str, KnownSchema] = {}
        for reader in readers or []:
            known = self._catalog.resolve(_as_schema(reader))
            self._readers[known.ref.fullname] = known
        if self.schema is not None:
            self._readers[self.schema.ref.fullname] = self.schema
        self._validator = compile_validator(self.schema.schema) if self.schema is not None else None
        self._plans: dict[bytes, _ReadPlan] = {}
        self._id_plans: dict[int, _ReadPlan] = {}
        self._subject_ids: dict[tuple[str, bytes], int] = {}
        self._headers: dict[str | None, bytes] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ config

    @property
    def config(self) -> KafkaConfig:
        if self._config is None:
            self._config = KafkaConfig.from_env()
        return self._config

    @property
    def wire_format(self) -> str:
        return CONFLUENT if self.config.schema_registry_url else SINGLE_OBJECT

    def _writer(self) -> KnownSchema:
        if self.schema is None:
            raise SerializationError("this AvroSerializer has no schema to write with")
        return self.schema

    # -------------------------------------------------------- validation

    def validate(self, event: Any) -> bool:
        """True when ``event`` matches the schema and the field rules (see ``check`` for why not)."""
        try:
            self.check(event)
        except EventValidationError:
            return False
        return True

    def check(self, event: Any) -> None:
        """Raise ``EventValidationError`` naming the first invalid field."""
        if self._validator is None:
            raise SerializationError("this AvroSerializer has no schema to validate with")
        self._validator(event)

    # ---------------------------------------------------------- encoding

    def serialize(self, event: dict[str, Any], topic: str | None = None) -> bytes:
        """Avro-encode a (valid) event in this config's wire format.

        With a registry the subject is ``<topic>-value`` (TopicNameStrategy),
        or the record's full name when no topic is given.
        """
        known = self._writer()
        header = self._headers.get(topic)
        if header is None:
            header = self._header(known, topic)
        buffer = io.BytesIO(header)
        buffer.seek(len(header))
        try:
            schemaless_writer(buffer, known.parsed, event)
        except Exception as exc:  # fastavro raises ValueError/TypeError/KeyError/…
            raise SerializationError(f"cannot encode {known.ref.label} event: {exc}") from exc
        return buffer.getvalue()

    def _header(self, known: KnownSchema, topic: str | None) -> bytes:
        """The framing in front of every body of this topic (cached: config and schema ids do not change)."""
        if self.wire_format == CONFLUENT:
            header = CONFLUENT_MAGIC.to_bytes(1, "big") + self._schema_id(known, topic).to_bytes(4, "big")
        else:
            header = SINGLE_OBJECT_MAGIC + known.fingerprint
        self._headers[topic] = header
        return header

    def _schema_id(self, known: KnownSchema, topic: str | None) -> int:
        subject = f"{topic}-value" if topic else known.ref.fullname
        key = (subject, known.fingerprint)
        schema_id = self._subject_ids.get(key)
        if schema_id is None:
            from confluent_kafka.schema_registry import Schema

            try:
                schema_id = int(
                    registry_client(self.config).register_schema(subject, Schema(json.dumps(known.schema), "AVRO"))
                )
            except Exception as exc:
                raise SerializationError(f"cannot register {known.ref.label} under subject {subject!r}: {exc}") from exc
            self._subject_ids[key] = schema_id
        return schema_id

    # ---------------------------------------------------------- decoding

    def deserialize(self, raw: bytes) -> dict[str, Any]:
        """The event in ``raw`` (see ``decode``)."""
        return self.decode(raw)[0]

    def decode(self, raw: bytes | None) -> tuple[dict[str, Any], SchemaRef]:
        """Decode one record; return the event and the writer's schema.

        Raises ``DeserializationError`` (``SchemaNotFoundError`` for an unknown
        fingerprint or schema id) with the raw bytes and the reason.
        """
        if not raw:
            raise DeserializationError("empty payload (no value bytes)", raw or b"")
        if raw[:2] == SINGLE_OBJECT_MAGIC:
            if len(raw) < 10:
                raise DeserializationError(f"truncated header: {len(raw)} bytes, single-object needs 10", raw)
            plan = self._plans.get(raw[2:10]) or self._plan_for_fingerprint(raw)
            start = 10
        elif raw[0] == CONFLUENT_MAGIC:
            if len(raw) < 5:
                raise DeserializationError(f"truncated header: {len(raw)} bytes, Confluent framing needs 5", raw)
            schema_id = int.from_bytes(raw[1:5], "big")
            plan = self._id_plans.get(schema_id) or self._plan_for_id(schema_id, raw)
            start = 5
        else:
            raise DeserializationError(
                f"wrong magic byte 0x{raw[0]:02x}: neither Avro single-object (0xC3 0x01) nor Confluent (0x00)", raw
            )
        buffer = io.BytesIO(raw)
        buffer.seek(start)
        try:
            event = schemaless_reader(buffer, plan.writer, plan.reader)
        except Exception as exc:
            raise DeserializationError(f"truncated or corrupt {plan.ref.label} payload: {exc!r}", raw) from None
        if buffer.tell() != len(raw):
            raise DeserializationError(
                f"corrupt {plan.ref.label} payload: {len(raw) - buffer.tell()} trailing bytes after the record", raw
            )
        if not isinstance(event, dict):
            raise DeserializationError(f"{plan.ref.label} payload is not a record", raw)
        return event, plan.ref

    def _plan(self, writer: KnownSchema) -> _ReadPlan:
        reader = self._readers.get(writer.ref.fullname)
        if reader is None or reader.fingerprint == writer.fingerprint:
            return _ReadPlan(writer.parsed, None, writer.ref)
        return _ReadPlan(writer.parsed, reader.parsed, writer.ref)

    def _plan_for_fingerprint(self, raw: bytes) -> _ReadPlan:
        writer = self._catalog.by_fingerprint(raw[2:10])
        if writer is None:
            raise SchemaNotFoundError(f"unknown schema fingerprint {raw[2:10].hex()} (not in schemas/)", raw)
        with self._lock:
            plan = self._plans[raw[2:10]] = self._plan(writer)
        return plan

    def _plan_for_id(self, schema_id: int, raw: bytes) -> _ReadPlan:
        if not self.config.schema_registry_url:
            raise SchemaNotFoundError(
                f"Confluent-framed record (schema id {schema_id}) but no SCHEMA_REGISTRY_URL", raw
            )
        try:
            registered = registry_client(self.config).get_schema(schema_id)
            writer = self._catalog.resolve(json.loads(registered.schema_str))
        except Exception as exc:
            raise SchemaNotFoundError(f"schema id {schema_id} not found in the registry: {exc}", raw) from None
        with self._lock:
            plan = self._id_plans[schema_id] = self._plan(writer)
        return plan


_decoders: dict[str | None, AvroSerializer] = {}


def latest_reader_decoder(config: KafkaConfig | None = None) -> AvroSerializer:
    """A decoder that reads every record into the latest version of its schema (for ingest)."""
    config = config or KafkaConfig.from_env()
    key = config.schema_registry_url
    decoder = _decoders.get(key)
    if decoder is None:
        catalog = default_catalog()
        latest = {s.ref.name: s for s in catalog}  # iteration is sorted by (name, version)
        decoder = AvroSerializer(readers=[s.schema for s in latest.values()], config=config, catalog=catalog)
        _decoders[key] = decoder
    return decoder


def decode_event(raw: bytes, config: KafkaConfig | None = None) -> tuple[dict[str, Any], SchemaRef]:
    """Decode one Kafka value into (event, writer schema); raises ``DeserializationError`` with the reason."""
    return latest_reader_decoder(config).decode(raw)
