"""The guide's FastAPI inspection service (examples/inspection_service) against the real broker."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.serialization import decode_event
from chipq_pipelines.events.topics import INSPECTION_TOPIC, ensure_topics

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "inspection_service"


@pytest.fixture
def example_app(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.delenv("SCHEMA_REGISTRY_URL", raising=False)
    ensure_topics(KafkaConfig.from_env(), partitions=3)
    monkeypatch.syspath_prepend(str(EXAMPLE))
    for name in [m for m in sys.modules if m == "app" or m.startswith("app.")]:
        monkeypatch.delitem(sys.modules, name)
    from app.main import app  # the example's package is called `app`, as in the guide

    yield app
    for name in [m for m in sys.modules if m == "app" or m.startswith("app.")]:
        del sys.modules[name]


def lot_events(bootstrap: str, lot: str, expected: int) -> list[dict[str, Any]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False})
    partitions = consumer.list_topics(INSPECTION_TOPIC, timeout=10).topics[INSPECTION_TOPIC].partitions
    consumer.assign([TopicPartition(INSPECTION_TOPIC, p, 0) for p in partitions])
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    try:
        while len(found) < expected and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.2):
                if message.error() is None:
                    event = decode_event(message.value(), KafkaConfig())[0]
                    if event["batch_id"] == lot:
                        found.append(event)
    finally:
        consumer.close()
    return sorted(found, key=lambda e: e["event_time"])


def test_create_and_complete_through_http_publish_events(example_app: Any, kafka_bootstrap: str) -> None:
    from fastapi.testclient import TestClient

    lot = f"LOT-{uuid.uuid4().hex[:8]}"
    with TestClient(example_app) as client:  # runs the lifespan: producer started and stopped
        created = client.post("/inspections/", json={"lot_id": lot, "chip_id": "CHIP-1", "station_id": "ST-2"})
        assert created.status_code == 200, created.text
        inspection_id = created.json()["inspection_id"]
        results = {
            "quality_score": 0.42,
            "processing_time": 87,
            "defects": [{"type": "void", "severity": "CRITICAL", "confidence": 0.95, "location": {"x": 3, "y": 4}}],
        }
        completed = client.post(f"/inspections/{inspection_id}/complete", json=results)
        assert completed.status_code == 200, completed.text
        assert completed.json()["status"] == "completed"
        sent = example_app.state.inspection_service.event_producer.get_metrics()["messages_sent"]
        assert sent == 2

    events = lot_events(kafka_bootstrap, lot, 2)
    assert [e["event_type"] for e in events] == ["INSPECTION_CREATED", "INSPECTION_COMPLETED"]
    assert all(e["inspection_id"] == inspection_id and e["chip_id"] == "CHIP-1" for e in events)
    assert events[0]["metadata"] == {"station": "ST-2", "created_by": "1"}
    assert events[1]["quality_score"] == 0.42
    assert events[1]["defects"] == [
        {"defect_type": "void", "severity": "CRITICAL", "confidence": 0.95, "location": {"x": 3.0, "y": 4.0}}
    ]
    assert events[1]["metadata"] == {"processing_time_ms": "87"}


def test_an_invalid_completion_is_refused_before_publishing(example_app: Any) -> None:
    from fastapi.testclient import TestClient

    with TestClient(example_app, raise_server_exceptions=False) as client:
        inspection_id = client.post("/inspections/", json={"lot_id": "L", "chip_id": "C"}).json()["inspection_id"]
        response = client.post(f"/inspections/{inspection_id}/complete", json={"quality_score": 1.7})
        assert response.status_code == 500
        metrics = example_app.state.inspection_service.event_producer.get_metrics()
        assert metrics["messages_sent"] == 1 and metrics["messages_failed"] == 0
