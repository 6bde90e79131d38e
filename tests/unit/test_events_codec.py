"""The Avro codec: both wire formats, schema evolution both ways, poison bytes, validation."""

from __future__ import annotations

import io
import json
import math
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import parse_schema, schemaless_writer

from chipq_pipelines.events import builders
from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.errors import (
    DeserializationError,
    EventValidationError,
    SchemaNotFoundError,
    SchemaRegistryUnavailableError,
)
from chipq_pipelines.events.schemas import SCHEMAS_DIR, default_catalog, load_schema
from chipq_pipelines.events.serialization import AvroSerializer, decode_event, registry_client
from chipq_pipelines.local_kafka import free_port

PLAIN = KafkaConfig()


def registry_config() -> KafkaConfig:
    return KafkaConfig(schema_registry_url=f"mock://codec-{uuid.uuid4().hex[:8]}")


def inspection(**overrides: Any) -> dict[str, Any]:
    event = builders.inspection_event(
        "INSPECTION_COMPLETED",
        inspection_id="INSP-1",
        batch_id="LOT-'7'",
        chip_id="CHIP-1",
        inspection_type="visual",
        status="completed",
        quality_score=0.93,
        defects=[{"defect_type": "scratch", "severity": "HIGH", "confidence": 0.8, "location": {"x": 1.5, "y": -2.0}}],
        metadata={"station": "ST-4"},
        wafer_id="W-9",
        event_time=datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC),
    )
    event.update(overrides)
    return event


def quality(**overrides: Any) -> dict[str, Any]:
    event = builders.quality_event(
        "THRESHOLD_VIOLATED",
        batch_id="LOT-1",
        rule="defect_rate",
        threshold=0.05,
        observed_value=0.09,
        alert_level="CRITICAL",
    )
    event.update(overrides)
    return event


def crc64_avro(data: bytes) -> int:
    """The Avro spec's reference Rabin fingerprint, written out independently of fastavro."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def test_every_schema_file_is_known_by_name_version_and_fingerprint() -> None:
    refs = {(s.ref.name, s.ref.version) for s in default_catalog()}
    assert refs == {("inspection", 1), ("inspection", 2), ("quality", 1), ("quality", 2), ("quality", 3)}
    assert len({s.fingerprint for s in default_catalog()}) == len(list(SCHEMAS_DIR.glob("*.avsc")))


def test_single_object_header_is_magic_plus_little_endian_crc64_of_canonical_form() -> None:
    from fastavro.schema import to_parsing_canonical_form

    serializer = AvroSerializer(load_schema("inspection", 1), config=PLAIN)
    raw = serializer.serialize(inspection())
    canonical = to_parsing_canonical_form(load_schema("inspection", 1)).encode()
    assert raw[:2] == b"\xc3\x01"
    assert raw[2:10] == crc64_avro(canonical).to_bytes(8, "little")


@pytest.mark.parametrize("config_factory", [lambda: PLAIN, registry_config], ids=["single-object", "confluent"])
def test_round_trip_is_exact_in_both_wire_formats(config_factory: Any) -> None:
    config = config_factory()
    for name, event in (("inspection", inspection()), ("quality", quality())):
        serializer = AvroSerializer(load_schema(name, 1), config=config)
        raw = serializer.serialize(event, topic=f"topic-{name}")
        decoded, ref = serializer.decode(raw)
        assert decoded == event
        assert isinstance(decoded["event_id"], str)
        assert decoded["event_time"].tzinfo is not None and decoded["event_time"].utcoffset().total_seconds() == 0
        assert ref.label == f"{name}.v1"


def test_event_time_is_kept_to_the_millisecond() -> None:
    event = inspection()
    assert event["event_time"] == datetime(2025, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)


def test_confluent_framing_is_readable_by_confluents_own_deserializer() -> None:
    config = registry_config()
    raw = AvroSerializer(load_schema("quality"), config=config).serialize(quality(), topic="q")
    assert raw[0] == 0 and int.from_bytes(raw[1:5], "big") >= 1
    theirs = AvroDeserializer(registry_client(config))(raw, SerializationContext("q", MessageField.VALUE))
    assert theirs["batch_id"] == "LOT-1" and theirs["alert_level"] == "CRITICAL"


def test_decoder_without_registry_accepts_single_object_and_one_with_registry_accepts_both() -> None:
    config = registry_config()
    event = inspection()
    single = AvroSerializer(load_schema("inspection", 1), config=PLAIN).serialize(event)
    framed = AvroSerializer(load_schema("inspection", 1), config=config).serialize(event, topic="t")
    reader = AvroSerializer(load_schema("inspection", 1), config=config)
    assert reader.deserialize(single) == reader.deserialize(framed) == event
    # not the record's fault: a configuration to fix, never a poison verdict
    with pytest.raises(SchemaRegistryUnavailableError, match="set SCHEMA_REGISTRY_URL") as caught:
        AvroSerializer(load_schema("inspection", 1), config=PLAIN).decode(framed)
    assert not isinstance(caught.value, DeserializationError) and caught.value.raw == framed
    # garbage that merely starts with the Confluent magic byte is poison, registry or not
    with pytest.raises(SchemaNotFoundError, match="no chipq event"):
        AvroSerializer(load_schema("inspection", 1), config=PLAIN).decode(b"\x00\x00\x00\x00\x07trunc")


def test_an_unreachable_registry_is_unavailable_and_an_unknown_id_is_poison() -> None:
    """Connection refused (nothing listens on the port) is retried later; the registry's 404 is final."""
    framed = AvroSerializer(load_schema("inspection"), config=registry_config()).serialize(inspection(), topic="t")
    closed = KafkaConfig(schema_registry_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(SchemaRegistryUnavailableError, match="retry when it answers"):
        AvroSerializer(load_schema("inspection"), config=closed).decode(framed)


@pytest.mark.parametrize("name,new_field", [("inspection", "recipe_id"), ("quality", "model_version")])
def test_v1_data_reads_as_v2_and_v2_data_reads_as_v1(name: str, new_field: str) -> None:
    v1, v2 = load_schema(name, 1), load_schema(name, 2)
    base = inspection() if name == "inspection" else quality()
    old_data = AvroSerializer(v1, config=PLAIN).serialize(base)
    new_data = AvroSerializer(v2, config=PLAIN).serialize({**base, new_field: "R-17"})

    as_v2, writer = AvroSerializer(v2, config=PLAIN).decode(old_data)
    assert as_v2 == {**base, new_field: None} and writer.version == 1
    as_v1, writer = AvroSerializer(v1, config=PLAIN).decode(new_data)
    assert as_v1 == base and writer.version == 2
    latest, writer = decode_event(old_data, PLAIN)
    assert latest[new_field] is None and writer.label == f"{name}.v1"


@pytest.mark.parametrize("config_factory", [lambda: PLAIN, registry_config], ids=["single-object", "confluent"])
def test_older_quality_readers_read_v3_violations_but_cannot_read_a_clearance(config_factory: Any) -> None:
    """v3 adds THRESHOLD_CLEARED to the event_type enum, which has no default: a v1 or v2 reader reads every
    v3 event except a clearance, which fails with a DeserializationError naming the symbol (a consumer
    dead-letters it and goes on). The latest reader reads all of them."""
    config = config_factory()
    v3 = AvroSerializer(load_schema("quality", 3), config=config)
    violated = quality(model_version="rules-2")
    cleared = builders.threshold_cleared_event(
        batch_id="LOT-1", rule="defect_rate", threshold=0.05, observed_value=0.01, alert_level="CRITICAL"
    )
    raw_violated, raw_cleared = v3.serialize(violated, topic="q"), v3.serialize(cleared, topic="q")
    for version in (1, 2):
        older = AvroSerializer(load_schema("quality", version), config=config)
        as_older, writer = older.decode(raw_violated)
        assert as_older["event_type"] == "THRESHOLD_VIOLATED" and writer.label == "quality.v3"
        assert as_older.get("model_version") == ("rules-2" if version == 2 else None)
        with pytest.raises(DeserializationError, match="THRESHOLD_CLEARED") as failure:
            older.decode(raw_cleared)
        assert failure.value.raw == raw_cleared and "cannot be read with this reader's schema" in failure.value.reason
    latest, writer = decode_event(raw_cleared, config)
    assert latest == {**cleared, "model_version": None} and writer.label == "quality.v3"
    assert latest["event_type"] == "THRESHOLD_CLEARED" and latest["pass_fail"] is True


def _poison(kind: str, good: bytes) -> bytes:
    return {
        "garbage": b"this is not avro at all",
        "wrong magic": b"\x7f" + good[1:],
        "unknown fingerprint": good[:2] + b"\x00" * 8 + good[10:],
        "unknown schema id": b"\x00" + (999_999).to_bytes(4, "big") + good[10:],
        "truncated payload": good[:-7],
        "truncated header": good[:6],
        "trailing bytes": good + b"\x00\x01",
        "empty": b"",
    }[kind]


@pytest.mark.parametrize(
    "kind,error,reason",
    [
        ("garbage", DeserializationError, "wrong magic"),
        ("wrong magic", DeserializationError, "wrong magic byte 0x7f"),
        ("unknown fingerprint", SchemaNotFoundError, "unknown schema fingerprint"),
        ("unknown schema id", SchemaNotFoundError, "schema id 999999"),
        ("truncated payload", DeserializationError, "truncated or corrupt"),
        ("truncated header", DeserializationError, "truncated header"),
        ("trailing bytes", DeserializationError, "trailing bytes"),
        ("empty", DeserializationError, "empty payload"),
    ],
)
def test_poison_bytes_raise_with_reason_and_keep_the_raw_bytes(kind: str, error: type, reason: str) -> None:
    config = registry_config()
    good = AvroSerializer(load_schema("inspection"), config=PLAIN).serialize(inspection())
    raw = _poison(kind, good)
    with pytest.raises(error) as caught:
        AvroSerializer(load_schema("inspection"), config=config).decode(raw)
    assert reason in caught.value.reason
    assert caught.value.raw == raw


def test_a_schema_given_as_path_or_json_text_works_like_the_dict() -> None:
    path = SCHEMAS_DIR / "inspection.avsc"
    event = inspection()
    by_path = AvroSerializer(Path(path), config=PLAIN)
    by_text = AvroSerializer(path.read_text(), config=PLAIN)
    assert by_path.serialize(event) == by_text.serialize(event)


def test_bare_fastavro_body_matches_the_library_body() -> None:
    event = inspection()
    buffer = io.BytesIO()
    schemaless_writer(buffer, parse_schema(load_schema("inspection", 1)), event)
    assert AvroSerializer(load_schema("inspection", 1), config=PLAIN).serialize(event)[10:] == buffer.getvalue()


# ----------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "change,field",
    [
        (lambda e: e.pop("chip_id"), "chip_id"),
        (lambda e: e.update(batch_id=17), "batch_id"),
        (lambda e: e.update(quality_score=1.2), "quality_score"),
        (lambda e: e.update(quality_score=math.nan), "quality_score"),
        (lambda e: e.update(quality_score="0.9"), "quality_score"),
        (lambda e: e["defects"][0].update(severity="SEVERE"), "defects[0].severity"),
        (lambda e: e["defects"][0].update(confidence=-0.1), "defects[0].confidence"),
        (lambda e: e["defects"][0]["location"].pop("y"), "defects[0].location.y"),
        (lambda e: e.update(event_type="INSPECTION_DELETED"), "event_type"),
        (lambda e: e.update(event_id="not-a-uuid"), "event_id"),
        (lambda e: e.update(event_time=datetime(2025, 1, 1)), "event_time"),
        (lambda e: e["metadata"].update(count=3), "metadata['count']"),
        (lambda e: e.update(colour="red"), "colour"),
    ],
)
def test_validation_names_the_offending_field(change: Any, field: str) -> None:
    event = json.loads(json.dumps(inspection(), default=str))
    event["event_time"] = inspection()["event_time"]
    change(event)
    serializer = AvroSerializer(load_schema("inspection"), config=PLAIN)
    assert serializer.validate(event) is False
    with pytest.raises(EventValidationError) as caught:
        serializer.check(event)
    assert caught.value.field == field


def test_guide_schema_validation_snippet() -> None:
    schema = load_schema("inspection")
    event_data = inspection()
    # --- the guide's "Schema Issues" snippet, as written
    from events.utils.serialization import AvroSerializer

    serializer = AvroSerializer(schema)

    is_valid = serializer.validate(event_data)
    if not is_valid:
        print("Validation failed - check required fields")
    # ---
    assert is_valid is True
    assert serializer.validate({"event_type": "INSPECTION_CREATED"}) is False


@pytest.mark.parametrize(
    "fields,field",
    [
        ({"scope": "LOT", "inspection_id": "I-1", "batch_id": "L"}, "inspection_id"),
        ({"scope": "DAY", "event_date": "2025-13-01"}, "event_date"),
        ({"scope": "INSPECTION", "batch_id": "L"}, "inspection_id"),
        ({}, "scope"),
    ],
)
def test_quality_scope_rules_name_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(EventValidationError) as caught:
        builders.quality_event("THRESHOLD_VIOLATED", **fields)
    assert caught.value.field == field


def test_scope_is_inferred_from_the_ids() -> None:
    assert builders.quality_event("THRESHOLD_VIOLATED", batch_id="L")["scope"] == "LOT"
    assert builders.quality_event("THRESHOLD_VIOLATED", event_date="2025-01-02")["scope"] == "DAY"
    assert builders.quality_event("QUALITY_ASSESSED", inspection_id="I", batch_id="L")["scope"] == "INSPECTION"
