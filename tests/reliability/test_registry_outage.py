"""A schema registry outage is waited out, never turned into rejects or dead letters.

Producers frame their records for a real registry (Apicurio, Confluent's API),
which then goes down. Ingest must fail its run without landing or rejecting
anything, and a consumer must wait; once the registry is back, everything lands.
Both run in child processes: a client in this process has the schemas cached.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.producers import SyncInspectionEventProducer
from chipq_pipelines.local_kafka import free_port
from chipq_pipelines.local_registry import LocalRegistry
from chipq_pipelines.paths import REPO_ROOT, ChipqHome

pytestmark = [pytest.mark.reliability, pytest.mark.short]

EVENTS = 60

CONSUMER = textwrap.dedent(
    """
    import asyncio, json, sys
    from chipq_pipelines.events.base_consumer import BaseEventConsumer
    from chipq_pipelines.events.config import KafkaConfig
    from chipq_pipelines.events.schemas import INSPECTION, load_schema

    class Counting(BaseEventConsumer):
        async def process_event(self, event_data, record):
            pass

    async def main():
        config = KafkaConfig(bootstrap_servers=sys.argv[1], schema_registry_url=sys.argv[2])
        consumer = Counting([sys.argv[3]], sys.argv[4], load_schema(INSPECTION), config, max_retry_backoff_s=1.0)
        await consumer.start()
        await consumer.consume(consumer.process_event, max_messages=int(sys.argv[5]), timeout=90)
        metrics = consumer.get_metrics()
        await consumer.stop()
        print(json.dumps({k: metrics[k] for k in ("messages_processed", "messages_dead_lettered", "registry_waits")}))

    asyncio.run(main())
    """
)


@pytest.fixture
def registry() -> Iterator[LocalRegistry]:
    instance_dir = Path(tempfile.mkdtemp(prefix="chipq-test-registry-"))
    reg = LocalRegistry(port=free_port(), instance_dir=instance_dir, app_dir=ChipqHome.from_env().registry / "app")
    try:
        reg.start()
    except Exception as exc:  # a test that needs the registry fails, it never skips
        pytest.fail(f"could not start the local schema registry: {exc}")
    try:
        yield reg
    finally:
        reg.stop()
        shutil.rmtree(instance_dir, ignore_errors=True)


def _counts(env) -> tuple[int, int]:
    if not env.warehouse.exists():
        return 0, 0
    conn = duckdb.connect(str(env.warehouse), read_only=True)
    try:
        raw = conn.execute("SELECT count(*) FROM raw.inspection_events").fetchone()[0]
        rejected = conn.execute("SELECT count(*) FROM ops.rejected_events").fetchone()[0]
        return raw, rejected
    finally:
        conn.close()


@pytest.mark.case("outages", "schema registry down while framed records wait, then up (ingest and a consumer)")
def test_registry_down_then_up_rejects_nothing_and_lands_everything(
    kafka_bootstrap, make_pipeline_env, registry, rel, row
) -> None:
    env = make_pipeline_env(kafka_bootstrap, SCHEMA_REGISTRY_URL=registry.url)
    framed = KafkaConfig(bootstrap_servers=kafka_bootstrap, schema_registry_url=registry.url)
    prefix = f"REG-{uuid.uuid4().hex[:6]}"
    published: set[str] = set()
    with SyncInspectionEventProducer(framed, topic=env.inspection_topic) as producer:
        for i in range(EVENTS):
            event_id = str(uuid.uuid4())
            producer.publish_inspection_completed(
                inspection_id=f"{prefix}/I{i}", batch_id=f"{prefix}-{i % 3}", chip_id=f"C{i}",
                inspection_type="optical", quality_score=0.9, event_id=event_id,
            )  # fmt: skip
            published.add(event_id)
    registry.stop()

    down = rel.catch_up_subprocess(env)
    assert down.returncode != 0
    assert "schema registry could not say" in down.stdout + down.stderr
    assert _counts(env) == (0, 0)  # nothing landed, nothing rejected: the next run retries

    consumer = subprocess.Popen(
        [sys.executable, "-c", CONSUMER, kafka_bootstrap, registry.url, env.inspection_topic,
         f"outage-{uuid.uuid4().hex[:8]}", str(EVENTS)],
        env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    time.sleep(8)  # the consumer meets the outage and waits
    registry.start()  # same port and storage: the same schema ids
    out, err = consumer.communicate(timeout=120)
    assert consumer.returncode == 0, err[-3000:]
    metrics = json.loads(out.strip().splitlines()[-1])
    assert metrics["messages_processed"] == EVENTS
    assert metrics["messages_dead_lettered"] == 0
    assert metrics["registry_waits"] >= 1

    up = rel.catch_up_subprocess(env)
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
    assert _counts(env) == (EVENTS, 0)
    counts = rel.tally(env, published)
    row.sent, row.landed, row.rejected, row.lost, row.duplicated = (
        EVENTS,
        counts.landed_ids,
        counts.rejected,
        counts.lost,
        counts.duplicated,
    )
    row.note(
        "registry down: the ingest run fails with nothing landed or rejected, the consumer waits "
        f"({metrics['registry_waits']} waits, 0 dead letters); registry up: everything lands"
    )
