"""The event processor: SIGTERM stops it cleanly; analytics and notifications on the real broker."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.consumers import AnalyticsConsumer, NotificationConsumer
from chipq_pipelines.events.notifiers import NotificationError, WebhookNotifier
from chipq_pipelines.events.producers import InspectionEventProducer, SyncQualityEventProducer
from chipq_pipelines.events.topics import QUALITY_TOPIC, dlq_topic, ensure_topics
from chipq_pipelines.paths import REPO_ROOT

pytestmark = pytest.mark.integration


@pytest.fixture
def config(kafka_bootstrap: str) -> KafkaConfig:
    config = KafkaConfig(bootstrap_servers=kafka_bootstrap)
    ensure_topics(config, partitions=3)
    return config


def test_run_processor_notifies_and_stops_cleanly_on_sigterm(config: KafkaConfig, tmp_path: Path) -> None:
    alerts = tmp_path / "alerts.jsonl"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": config.bootstrap_servers,
        "CHIPQ_ALERT_JSONL": str(alerts),
        "PYTHONPATH": str(REPO_ROOT),
    }
    env.pop("SCHEMA_REGISTRY_URL", None)
    code = "from chipq_pipelines.events.processor import run_processor; run_processor(); print('stopped cleanly')"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        event_id = str(uuid.uuid4())
        with SyncQualityEventProducer(config) as producer:
            producer.publish_threshold_violated(
                batch_id=f"LOT-{event_id[:8]}", threshold=0.05, observed_value=0.3, event_id=event_id
            )
        deadline = time.monotonic() + 30
        while not (alerts.exists() and event_id in alerts.read_text()) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.1)
        assert event_id in alerts.read_text()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    assert b"stopped cleanly" in out


@pytest.mark.asyncio
async def test_analytics_keeps_per_lot_statistics(config: KafkaConfig, new_group: Any) -> None:
    lot = f"LOT-{uuid.uuid4().hex[:8]}"
    async with InspectionEventProducer(config) as producer:
        await producer.publish_inspection_created("A-1", lot, "C-1", "visual")
        await producer.publish_inspection_completed(
            "A-1",
            lot,
            "C-1",
            "visual",
            quality_score=0.8,
            defects=[
                {"defect_type": "void", "severity": "LOW", "confidence": 0.9, "location": {"x": 0, "y": 0}},
                {"defect_type": "void", "severity": "HIGH", "confidence": 0.6, "location": {"x": 1, "y": 1}},
            ],
        )
        await producer.publish_inspection_completed("A-2", lot, "C-2", "visual", quality_score=0.6)
    consumer = AnalyticsConsumer(config, group_id=new_group("analytics"))
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            await consumer.consume(consumer.process_event, timeout=0.5)
            stats = consumer.lot_statistics(lot)
            if stats and stats["inspections_completed"] == 2:
                break
    finally:
        await consumer.stop()
    assert stats is not None
    assert stats["inspections_created"] == 1 and stats["inspections_completed"] == 2
    assert stats["mean_quality_score"] == pytest.approx(0.7)
    assert stats["defects_by_type"] == {"void": 2} and stats["defects_by_severity"] == {"LOW": 1, "HIGH": 1}


@pytest.mark.asyncio
async def test_notifications_go_to_a_webhook_once_per_event_id(config: KafkaConfig, new_group: Any) -> None:
    received: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    event_id = str(uuid.uuid4())
    try:
        with SyncQualityEventProducer(config) as producer:
            for _ in range(3):
                producer.publish_threshold_violated(
                    scope="DAY", event_date="2025-02-03", threshold=0.1, event_id=event_id
                )
        notifier = WebhookNotifier(f"http://127.0.0.1:{server.server_address[1]}/alerts")
        consumer = NotificationConsumer(config, notifier=notifier, group_id=new_group("notify"))
        await consumer.start()
        try:
            deadline = time.monotonic() + 30
            while consumer.duplicates_skipped < 2 and time.monotonic() < deadline:
                await consumer.consume(consumer.process_event, timeout=0.5)
        finally:
            await consumer.stop()
        await asyncio.sleep(0)
    finally:
        server.shutdown()
    mine = [r for r in received if r["event_id"] == event_id]
    assert len(mine) == 1 and mine[0]["scope"] == "DAY" and mine[0]["event_date"] == "2025-02-03"


@pytest.mark.asyncio
async def test_a_failing_webhook_never_shows_its_secret_url(
    config: KafkaConfig, new_group: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Slack/Teams keep the credential in the URL's path and query: DLQ headers, logs and errors show the host only."""

    class Refusing(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret = f"T0SECRET/B0SECRET/{uuid.uuid4().hex}"
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    url = f"{origin}/services/{secret}?token={secret[-8:]}"
    event_id = str(uuid.uuid4())
    dlq = dlq_topic(QUALITY_TOPIC)
    try:
        with SyncQualityEventProducer(config) as producer:
            producer.publish_threshold_violated(batch_id=f"LOT-{event_id[:8]}", threshold=0.9, event_id=event_id)
        notifier = WebhookNotifier(url)
        assert secret not in repr(notifier)
        consumer = NotificationConsumer(config, notifier=notifier, group_id=new_group("notify"), retry_backoff_s=0.01)
        caplog.set_level(logging.DEBUG)
        attempts = 0

        async def handler(event: dict[str, Any], record: Any) -> None:
            nonlocal attempts
            attempts += event["event_id"] == event_id
            await consumer.process_event(event, record)

        await consumer.start()
        try:
            deadline = time.monotonic() + 30
            while attempts < 2 and time.monotonic() < deadline:  # the record is dead-lettered after its 2nd attempt
                await consumer.consume_with_retry(handler, max_retries=1, timeout=0.5)
        finally:
            await consumer.stop()
    finally:
        server.shutdown()
    headers = _dead_letter_headers(config, dlq, event_id)
    reason = headers["dlq.reason"]
    assert f"webhook {origin} answered HTTP 500" in reason, reason
    for text in [*headers.values(), caplog.text]:
        assert secret not in text and "/services/" not in text and "token=" not in text

    # Unreachable (a closed port): the connection error names the host only, too.
    closed = f"http://127.0.0.1:{server.server_address[1]}/services/{secret}"
    with pytest.raises(NotificationError) as failure:
        await WebhookNotifier(closed).notify({"event_id": event_id})
    assert secret not in str(failure.value) and "127.0.0.1" in str(failure.value)
    assert failure.value.__cause__ is None and failure.value.__suppress_context__


def _dead_letter_headers(config: KafkaConfig, topic: str, event_id: str) -> dict[str, str]:
    """The headers of the record of ``event_id`` on the dead-letter topic ``topic``."""
    consumer = Consumer(
        config.librdkafka_config(**{"group.id": f"dlq-reader-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"})
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = consumer.poll(1)
            if message is None or message.error():
                continue
            headers = {k: (v or b"").decode() for k, v in message.headers() or []}
            if headers.get("event_id") == event_id:
                return headers
    finally:
        consumer.close()
    raise AssertionError(f"no dead-lettered record of {event_id} on {topic}")


@pytest.mark.asyncio
async def test_two_replicas_and_a_restart_notify_each_alert_once(config: KafkaConfig, new_group: Any) -> None:
    """Two consumers of one group share the notified ids (``<group>.notified``); a restarted one that reads
    everything again (its offsets rewound, as after a crash before committing) notifies nothing again."""
    group = new_group("notify")
    notified: list[str] = []

    class Recorder:
        async def notify(self, event: dict[str, Any]) -> None:
            notified.append(event["event_id"])

    lot = f"LOT-{uuid.uuid4().hex[:8]}"
    ids = [str(uuid.uuid4()) for _ in range(12)]
    with SyncQualityEventProducer(config) as producer:
        for copy in range(2):  # every alert twice (a re-send), on different partitions (other keys)
            for index, event_id in enumerate(ids):
                if index % 3 == 2:
                    producer.publish_threshold_cleared(batch_id=f"{lot}-{index}-{copy}", rule="r", event_id=event_id)
                else:
                    producer.publish_threshold_violated(batch_id=f"{lot}-{index}-{copy}", event_id=event_id)

    def mine() -> list[str]:
        return [i for i in notified if i in ids]

    async def run(consumers: list[NotificationConsumer], until: Callable[[], bool]) -> None:
        for consumer in consumers:
            await consumer.start()
        try:
            deadline = time.monotonic() + 60
            while not until() and time.monotonic() < deadline:
                await asyncio.gather(*(c.consume(c.process_event, timeout=0.5) for c in consumers))
        finally:
            for consumer in consumers:
                await consumer.stop()

    replicas = [NotificationConsumer(config, notifier=Recorder(), group_id=group) for _ in range(2)]
    await run(replicas, lambda: sum(r.duplicates_skipped for r in replicas) >= len(ids) and len(mine()) >= len(ids))
    assert sorted(mine()) == sorted(ids), "each alert notified once by the two replicas"

    _rewind(config, group)
    restarted = NotificationConsumer(config, notifier=Recorder(), group_id=group)
    await run([restarted], lambda: restarted.duplicates_skipped >= 2 * len(ids))
    assert restarted.duplicates_skipped >= 2 * len(ids), "the restarted consumer read every alert again"
    assert sorted(mine()) == sorted(ids), "nothing notified again after the restart"


def _rewind(config: KafkaConfig, group: str) -> None:
    """Commit offset 0 on every partition of the quality topic for ``group`` (it then reads everything again)."""
    consumer = Consumer(config.librdkafka_config(**{"group.id": group, "enable.auto.commit": False}))
    try:
        partitions = consumer.list_topics(QUALITY_TOPIC, timeout=10).topics[QUALITY_TOPIC].partitions
        consumer.commit(offsets=[TopicPartition(QUALITY_TOPIC, p, 0) for p in partitions], asynchronous=False)
    finally:
        consumer.close()
