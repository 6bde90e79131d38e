"""The schema registry chipq builds and starts itself, through confluent_kafka's own client.

The registry (Apicurio, Confluent-compatible API) is built from Maven Central
on first use into ``$CHIPQ_HOME/registry/app`` and reused afterwards; each
test module run starts one on a free port in a folder of its own.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from chipq_pipelines.local_kafka import free_port
from chipq_pipelines.local_registry import LocalRegistry
from chipq_pipelines.paths import ChipqHome

pytestmark = pytest.mark.integration

RECORD_V1 = '{"type":"record","name":"Reading","fields":[{"name":"chip","type":"string"}]}'
RECORD_V2 = (
    '{"type":"record","name":"Reading","fields":[{"name":"chip","type":"string"},'
    '{"name":"volts","type":"double","default":0.0}]}'
)
# A new field without a default: readers of this version cannot read older records.
RECORD_BROKEN = (
    '{"type":"record","name":"Reading","fields":[{"name":"chip","type":"string"},'
    '{"name":"volts","type":"double","default":0.0},{"name":"lot","type":"string"}]}'
)


@pytest.fixture(scope="module")
def registry() -> Iterator[LocalRegistry]:
    instance_dir = Path(tempfile.mkdtemp(prefix="chipq-test-registry-"))
    reg = LocalRegistry(port=free_port(), instance_dir=instance_dir, app_dir=ChipqHome.from_env().registry / "app")
    try:
        reg.start()
    except Exception as exc:  # like Kafka: a test that needs the registry fails, it never skips
        pytest.fail(f"could not start the local schema registry: {exc}")
    try:
        yield reg
    finally:
        reg.stop()
        shutil.rmtree(instance_dir, ignore_errors=True)


def _client(registry: LocalRegistry) -> SchemaRegistryClient:
    # A fresh client per use: the client caches schemas by id and would answer without asking.
    return SchemaRegistryClient({"url": registry.url})


def _subject() -> str:
    return f"chipq-test-{uuid.uuid4().hex[:12]}-value"


def test_register_then_read_back(registry: LocalRegistry) -> None:
    subject = _subject()
    schema_id = _client(registry).register_schema(subject, Schema(RECORD_V1, "AVRO"))
    assert isinstance(schema_id, int)

    reader = _client(registry)
    assert reader.get_schema(schema_id).schema_str == RECORD_V1
    latest = reader.get_latest_version(subject)
    assert (latest.schema_id, latest.version) == (schema_id, 1)
    assert reader.register_schema(subject, Schema(RECORD_V1, "AVRO")) == schema_id, "same schema, same id"


def test_unknown_schema_id_is_confluents_404(registry: LocalRegistry) -> None:
    with pytest.raises(SchemaRegistryError) as caught:
        _client(registry).get_schema(987_654_321)
    assert caught.value.http_status_code == 404
    assert caught.value.error_code == 40403  # Confluent's "schema not found"


def test_new_versions_must_be_backward_compatible(registry: LocalRegistry) -> None:
    subject = _subject()
    client = _client(registry)
    first = client.register_schema(subject, Schema(RECORD_V1, "AVRO"))
    assert client.register_schema(subject, Schema(RECORD_V2, "AVRO")) != first
    with pytest.raises(SchemaRegistryError) as caught:
        client.register_schema(subject, Schema(RECORD_BROKEN, "AVRO"))
    assert caught.value.http_status_code == 409


def test_stopped_refuses_connections_and_restart_keeps_schemas(registry: LocalRegistry) -> None:
    subject = _subject()
    schema_id = _client(registry).register_schema(subject, Schema(RECORD_V1, "AVRO"))

    assert registry.stop()
    assert not registry.is_running()
    with pytest.raises(httpx.ConnectError):
        _client(registry).get_schema(schema_id)

    assert registry.start()
    assert _client(registry).get_schema(schema_id).schema_str == RECORD_V1, "a restart keeps schemas and ids"
