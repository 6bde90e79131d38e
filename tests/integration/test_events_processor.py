"""The event processor: SIGTERM stops it cleanly; analytics and notifications on the real broker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.consumers import AnalyticsConsumer, NotificationConsumer
from chipq_pipelines.events.notifiers import WebhookNotifier
from chipq_pipelines.events.producers import InspectionEventProducer, SyncQualityEventProducer
from chipq_pipelines.events.topics import ensure_topics
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
