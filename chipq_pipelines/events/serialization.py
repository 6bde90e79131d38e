"""One Avro serializer/decoder pair for every event type.

Wire formats:

* Avro single-object encoding (no registry): ``0xC3 0x01`` + 8-byte
  CRC-64-AVRO fingerprint (little-endian) + Avro binary body.
* Confluent framing (``SCHEMA_REGISTRY_URL`` set): ``0x00`` + 4-byte big-endian
  schema id + Avro binary body. Written by ``confluent_kafka.schema_registry``'s
  own ``AvroSerializer`` (it registers the schema under ``<topic>-value``, or the
  record's full name without a topic, and frames the body).

Decoding accepts both, knows every schema file in ``schemas/`` by fingerprint,
and resolves the writer's schema to the reader's (v1 data read as v2 and back).

Confluent-framed records are not decoded by the library's ``AvroDeserializer``:
it costs about four times fastavro's ``schemaless_reader`` per record (38 µs
against 9.5 µs for an inspection event, measured with the library's in-memory
registry), returns ``uuid.UUID`` where chipq's events carry ``str``, and
accepts trailing bytes after a record. Ingest decodes every record here, so the
body is read with a cached fastavro read plan, as for single-object records;
the library resolves the framing (``prefix_schema_id_deserializer``) and the
schema (the registry client) once per schema id, and records with the same
5-byte prefix reuse that plan.
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError

from chipq_pipelines.events.config import ENV_VARS, KafkaConfig
from chipq_pipelines.events.errors import (
    DeserializationError,
    EventValidationError,
    SchemaNotFoundError,
    SchemaRegistryUnavailableError,
    SerializationError,
)
from chipq_pipelines.events.schemas import KnownSchema, SchemaCatalog, SchemaRef, default_catalog
from chipq_pipelines.events.validation import compile_validator

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0
#: Magic byte and 4-byte schema id in front of a Confluent-framed body.
CONFLUENT_HEADER_SIZE = 5
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


def _subject_name(topic: str | None, record_name: str) -> str:
    """``<topic>-value`` (TopicNameStrategy), or the record's full name when there is no topic."""
    from confluent_kafka.schema_registry import record_subject_name_strategy, topic_subject_name_strategy
    from confluent_kafka.serialization import MessageField, SerializationContext

    context = SerializationContext(topic, MessageField.VALUE)  # type: ignore[arg-type]  # None: no topic
    strategy = topic_subject_name_strategy if topic else record_subject_name_strategy
    subject = strategy(context, record_name)
    if subject is None:
        raise SerializationError(f"no subject for {record_name!r} on topic {topic!r}")
    return subject


def _is_registry_error(exc: Exception) -> bool:
    """The registry refused or could not be reached (as opposed to an event that does not encode)."""
    import httpx
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    return isinstance(exc, SchemaRegistryError | httpx.HTTPError | OSError)


def _schema_not_found(exc: Exception) -> bool:
    """The registry answered that the schema id does not exist (HTTP 404, Confluent error 40403)."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    return isinstance(exc, SchemaRegistryError) and exc.http_status_code == 404


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
        self._framed_plans: dict[bytes, _ReadPlan] = {}  # by the Confluent 5-byte prefix
        self._headers: dict[str | None, bytes] = {}  # single-object headers (cached: config and schema do not change)
        self._registry_encoders: dict[str | None, Callable[[dict[str, Any]], bytes]] = {}
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
            if self.wire_format == CONFLUENT:
                encode = self._registry_encoders.get(topic) or self._registry_encoder(known, topic)
                return encode(event)
            header = self._headers[topic] = SINGLE_OBJECT_MAGIC + known.fingerprint
        buffer = io.BytesIO(header)
        buffer.seek(len(header))
        try:
            schemaless_writer(buffer, known.parsed, event)
        except Exception as exc:  # fastavro raises ValueError/TypeError/KeyError/…
            raise SerializationError(f"cannot encode {known.ref.label} event: {exc}") from exc
        return buffer.getvalue()

    def _registry_encoder(self, known: KnownSchema, topic: str | None) -> Callable[[dict[str, Any]], bytes]:
        """``confluent_kafka``'s ``AvroSerializer`` for one topic (it registers the schema on first use).

        One per topic: the library's serializer keeps the id of the last subject it registered.
        """
        from confluent_kafka.schema_registry.avro import AvroSerializer as RegistryAvroSerializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        subject = _subject_name(topic, known.ref.fullname)
        library = RegistryAvroSerializer(
            registry_client(self.config),
            json.dumps(known.schema),
            # The subject is the same for every event of this topic: named once, not per event.
            conf={"auto.register.schemas": True, "subject.name.strategy": lambda _ctx, _record: subject},
        )
        context = SerializationContext(topic, MessageField.VALUE)  # type: ignore[arg-type]  # None: no topic

        def encode(event: dict[str, Any]) -> bytes:
            try:
                raw = library(event, context)
            except Exception as exc:
                if _is_registry_error(exc):
                    raise SerializationError(
                        f"cannot register {known.ref.label} under subject {subject!r}: {exc}"
                    ) from exc
                raise SerializationError(f"cannot encode {known.ref.label} event: {exc}") from exc
            if not isinstance(raw, bytes):
                raise SerializationError(f"cannot encode {known.ref.label} event: the serializer returned nothing")
            return raw

        with self._lock:
            self._registry_encoders[topic] = encode
        return encode

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
            plan = self._framed_plans.get(raw[:CONFLUENT_HEADER_SIZE]) or self._plan_for_framing(raw)
            start = CONFLUENT_HEADER_SIZE
        else:
            raise DeserializationError(
                f"wrong magic byte 0x{raw[0]:02x}: neither Avro single-object (0xC3 0x01) nor Confluent (0x00)", raw
            )
        buffer = io.BytesIO(raw)
        buffer.seek(start)
        try:
            event = schemaless_reader(buffer, plan.writer, plan.reader)
        except SchemaResolutionError as exc:
            # e.g. a v3 THRESHOLD_CLEARED read with the v1/v2 schema: that enum has no such symbol and no default.
            raise DeserializationError(
                f"{plan.ref.label} record cannot be read with this reader's schema: {exc}", raw
            ) from None
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

    def _plan_for_framing(self, raw: bytes) -> _ReadPlan:
        """The plan for a Confluent prefix not seen yet: the library reads the schema id, the registry the schema."""
        from confluent_kafka.schema_registry import prefix_schema_id_deserializer
        from confluent_kafka.schema_registry.serde import SchemaId

        if len(raw) < CONFLUENT_HEADER_SIZE:
            raise DeserializationError(
                f"truncated header: {len(raw)} bytes, Confluent framing needs {CONFLUENT_HEADER_SIZE}", raw
            )
        prefix = raw[:CONFLUENT_HEADER_SIZE]
        framing = SchemaId("AVRO")
        prefix_schema_id_deserializer(prefix, None, framing)
        schema_id = framing.id
        if not self.config.schema_registry_url:
            if self._reads_as_a_known_event(raw[CONFLUENT_HEADER_SIZE:]):
                # A real event framed for a registry: the configuration is wrong, not the record.
                raise SchemaRegistryUnavailableError(
                    f"a Confluent-framed record (schema id {schema_id}) but no schema registry is configured: "
                    "set SCHEMA_REGISTRY_URL to the registry its producer used",
                    raw,
                )
            raise SchemaNotFoundError(
                f"a record starting with the Confluent magic byte (schema id {schema_id}) that is no chipq "
                "event, and no SCHEMA_REGISTRY_URL to ask about it",
                raw,
            )
        try:
            registered = registry_client(self.config).get_schema(schema_id)
        except Exception as exc:
            if _schema_not_found(exc):  # the registry's authoritative answer: this id does not exist
                raise SchemaNotFoundError(f"schema id {schema_id} not found in the registry: {exc}", raw) from None
            raise SchemaRegistryUnavailableError(
                f"the schema registry could not say what schema id {schema_id} is "
                f"({type(exc).__name__}: {exc}); retry when it answers",
                raw,
            ) from exc
        try:
            writer = self._catalog.resolve(json.loads(registered.schema_str))
        except Exception as exc:
            raise SchemaNotFoundError(f"schema id {schema_id} is not a chipq event schema: {exc}", raw) from None
        with self._lock:
            plan = self._framed_plans[prefix] = self._plan(writer)
        return plan

    def _reads_as_a_known_event(self, body: bytes) -> bool:
        """Whether ``body`` decodes, to its last byte, as a record of some schema in the catalog.

        Without a registry this tells a real event framed for one (a configuration to fix: the
        run must fail) from garbage that happens to start with a zero byte (poison: rejected).
        """
        for known in self._catalog:
            buffer = io.BytesIO(body)
            try:
                event = schemaless_reader(buffer, known.parsed, None)
            except Exception:
                continue
            if isinstance(event, dict) and buffer.tell() == len(body) and event.get("event_id"):
                return True
        return False


_decoders: dict[str | None, AvroSerializer] = {}
_env_decoders: dict[str, AvroSerializer] = {}


def latest_reader_decoder(config: KafkaConfig | None = None) -> AvroSerializer:
    """A decoder that reads every record into the latest version of its schema (for ingest).

    Without ``config``, ``KafkaConfig.from_env()`` is read once per value of ``SCHEMA_REGISTRY_URL``
    (the only setting a decoder uses), not on every call of ``decode_event(raw)``.
    """
    if config is None:
        variable = os.environ.get(ENV_VARS["schema_registry_url"], "")
        decoder = _env_decoders.get(variable)
        if decoder is None:
            decoder = _env_decoders[variable] = latest_reader_decoder(KafkaConfig.from_env())
        return decoder
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
