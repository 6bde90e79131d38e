"""`chipq simulate` on the real broker: every record lands, events decode, poison does not, pacing holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message, TopicPartition

from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.errors import DeserializationError
from chipq_pipelines.events.serialization import decode_event
from chipq_pipelines.simulate import (
    MessShares,
    PoisonRecord,
    SimulationConfig,
    generate,
    publish_simulation,
    simulate_command,
)

pytestmark = pytest.mark.integration

START = datetime(2025, 2, 3, 6, tzinfo=UTC)


def read_all(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list[Message]:
    """Every record of ``topic`` from the beginning, until ``expected`` were read or ``timeout``."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            messages.extend(m for m in consumer.consume(1000, 0.2) if m.error() is None)
    finally:
        consumer.close()
    return messages


def test_simulate_publishes_every_record_and_the_truth(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic("simulate", partitions=3)
    config = KafkaConfig(bootstrap_servers=kafka_bootstrap)
    lines: list[str] = []
    truth_path = tmp_path / "truth.json"
    report = simulate_command(
        5000,
        seed=21,
        lots=10,
        truth=truth_path,
        start=START,
        config=config,
        topic=topic,
        progress=False,
        echo=lines.append,
    )
    sim = generate(5000, seed=21, lots=10, start=START)  # the same arguments give the same stream
    assert report.records == len(sim.records) and report.events_published == sim.counts.events
    assert report.poison == sim.counts.poison_total > 0 and report.duplicates == sim.counts.duplicates > 0
    assert report.lots == 10 and report.days_spanned == sim.days_spanned
    assert any("published" in line for line in lines)

    messages = read_all(kafka_bootstrap, topic, report.records)
    assert len(messages) == report.records
    decoded, rejected = [], []
    for message in messages:
        try:
            decoded.append(decode_event(message.value(), config)[0])
        except DeserializationError:
            rejected.append(message.value())
    assert sorted(rejected) == sorted(p.value for p in sim.poison())
    assert Counter(str(e["event_id"]) for e in decoded) == Counter(e["event_id"] for e in sim.events())
    assert {e["batch_id"] for e in decoded} == set(sim.lots)

    truth = json.loads(truth_path.read_text())
    assert truth["lots"] == sim.lots and truth["stream"]["poison"] == sim.counts.poison


def test_rate_paces_a_steady_stream(kafka_bootstrap: str, new_topic: Callable[..., str]) -> None:
    topic = new_topic("simulate-rate", partitions=1)
    quiet = SimulationConfig(mess=MessShares(duplicate_share=0, out_of_order_share=0, late_share=0, poison_share=0.01))
    sim = generate(600, seed=3, lots=2, start=START, config=quiet)
    started = time.monotonic()
    config = KafkaConfig(bootstrap_servers=kafka_bootstrap)
    report = publish_simulation(sim, config, topic=topic, rate=800, progress=False)
    elapsed = time.monotonic() - started
    assert report.records == 600 + 6
    assert elapsed >= 606 / 800 * 0.9  # no faster than the rate
    assert elapsed < 606 / 800 + 5
    messages = read_all(kafka_bootstrap, topic, report.records)
    assert len(messages) == report.records
    assert sum(isinstance(r, PoisonRecord) for r in sim.records) == 6


def test_cli_publishes_to_the_pipelines_inspection_topic(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """`chipq simulate` feeds the topic the pipeline of this environment reads (CHIPQ_INSPECTION_TOPIC)."""
    topic = new_topic("simulate-env", partitions=2)
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "CHIPQ_INSPECTION_TOPIC": topic}
    env["CHIPQ_HOME"] = str(tmp_path / "home")
    cli = [sys.executable, "-m", "chipq_pipelines.cli", "simulate", "-n", "400", "--lots", "2", "--no-progress"]
    result = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"to {topic} in" in result.stdout
    published = int(result.stdout.split("published ")[1].split(" records")[0].replace(",", ""))
    assert len(read_all(kafka_bootstrap, topic, published)) == published
