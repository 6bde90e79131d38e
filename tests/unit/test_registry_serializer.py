"""With a schema registry: confluent_kafka's own AvroSerializer writes, its framing helpers read, both interoperate."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import confluent_kafka.schema_registry as schema_registry
import confluent_kafka.schema_registry.avro as registry_avro
import pytest
from confluent_kafka.schema_registry import topic_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from chipq_pipelines.events import builders
from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.errors import SerializationError
from chipq_pipelines.events.schemas import load_schema
from chipq_pipelines.events.serialization import AvroSerializer, decode_event, registry_client


def registry_config() -> KafkaConfig:
    return KafkaConfig(schema_registry_url=f"mock://registry-{uuid.uuid4().hex[:8]}")


def inspection(index: int = 1) -> dict[str, Any]:
    return builders.inspection_event(
        "INSPECTION_COMPLETED",
        inspection_id=f"INSP-{index}",
        batch_id="LOT-7",
        chip_id=f"CHIP-{index}",
        inspection_type="visual",
        status="completed",
        quality_score=0.91,
        defects=[{"defect_type": "void", "severity": "LOW", "confidence": 0.7, "location": {"x": 3.0, "y": 4.5}}],
        metadata={"station": "ST-2"},
        event_time=datetime(2025, 3, 1, 8, 30, tzinfo=UTC),
    )


def context(topic: str) -> SerializationContext:
    return SerializationContext(topic, MessageField.VALUE)


def test_serialize_goes_through_confluents_avro_serializer(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    class Spy(registry_avro.AvroSerializer):  # type: ignore[misc]
        def __call__(self, obj: object, ctx: SerializationContext | None = None) -> bytes | None:
            calls.append(ctx.topic if ctx else "")
            return super().__call__(obj, ctx)

    monkeypatch.setattr(registry_avro, "AvroSerializer", Spy)
    serializer = AvroSerializer(load_schema("inspection"), config=registry_config())
    raws = [serializer.serialize(inspection(i), topic="spied") for i in range(3)]
    assert calls == ["spied"] * 3
    assert [serializer.deserialize(raw)["inspection_id"] for raw in raws] == ["INSP-0", "INSP-1", "INSP-2"]


def test_the_schema_is_registered_under_topic_value_or_the_record_name() -> None:
    config = registry_config()
    serializer = AvroSerializer(load_schema("inspection"), config=config)
    with_topic = serializer.serialize(inspection(), topic="lots")
    without = serializer.serialize(inspection())
    client = registry_client(config)
    fullname = "com.chipquality.events.InspectionEvent"
    assert set(client.get_subjects()) == {"lots-value", fullname}
    for raw, subject in ((with_topic, "lots-value"), (without, fullname)):
        latest = client.get_latest_version(subject)
        assert raw[0] == 0 and int.from_bytes(raw[1:5], "big") == latest.schema_id
        assert json.loads(latest.schema.schema_str) == load_schema("inspection")


def test_a_record_framed_by_confluents_own_serializer_decodes() -> None:
    config = registry_config()
    theirs = registry_avro.AvroSerializer(
        registry_client(config),
        json.dumps(load_schema("inspection", 1)),
        conf={"subject.name.strategy": topic_subject_name_strategy},
    )
    event = inspection()
    raw = theirs(event, context("external"))
    assert raw is not None
    decoded, writer = AvroSerializer(load_schema("inspection", 1), config=config).decode(raw)
    assert decoded == event and isinstance(decoded["event_id"], str)
    assert writer.label == "inspection.v1"
    latest, writer = decode_event(raw, config)  # ingest's decoder: read as the latest version
    assert latest == {**event, "recipe_id": None} and writer.label == "inspection.v1"


def test_our_records_decode_with_confluents_deserializer_against_the_same_registry() -> None:
    config = registry_config()
    event = inspection()
    raw = AvroSerializer(load_schema("inspection"), config=config).serialize(event, topic="ours")
    theirs = AvroDeserializer(registry_client(config))(raw, context("ours"))
    assert theirs is not None
    assert {**theirs, "event_id": str(theirs["event_id"])} == {**event, "recipe_id": None}


def test_the_framing_is_read_by_the_library_once_per_schema_id(monkeypatch: pytest.MonkeyPatch) -> None:
    config = registry_config()
    serializer = AvroSerializer(load_schema("inspection"), config=config)
    raws = [serializer.serialize(inspection(i), topic="t") for i in range(50)]
    prefixes: list[bytes] = []
    library = schema_registry.prefix_schema_id_deserializer

    def spy(payload: bytes, ctx: Any, schema_id: Any) -> Any:
        prefixes.append(payload)
        return library(payload, ctx, schema_id)

    monkeypatch.setattr(schema_registry, "prefix_schema_id_deserializer", spy)
    decoder = AvroSerializer(load_schema("inspection"), config=config)
    assert [decoder.deserialize(raw)["inspection_id"] for raw in raws] == [f"INSP-{i}" for i in range(50)]
    assert prefixes == [raws[0][:5]]  # the hot path reuses the plan of a prefix already seen


def test_a_registry_failure_and_an_event_that_does_not_encode_are_told_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    config = registry_config()
    client = registry_client(config)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise SchemaRegistryError(503, 50301, "registry unavailable")

    with monkeypatch.context() as patch:
        patch.setattr(client, "register_schema_full_response", refuse)
        with pytest.raises(SerializationError, match=r"cannot register inspection\.v2 under subject 'down-value'"):
            AvroSerializer(load_schema("inspection"), config=config).serialize(inspection(), topic="down")
    with pytest.raises(SerializationError, match=r"cannot encode inspection\.v2 event"):
        AvroSerializer(load_schema("inspection"), config=config).serialize({**inspection(), "quality_score": "x"}, "t")
