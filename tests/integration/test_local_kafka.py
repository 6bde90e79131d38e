"""The broker chipq starts itself: lifecycle through the CLI, and real traffic."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from chipq_pipelines.local_kafka import free_port
from chipq_pipelines.paths import ChipqHome

pytestmark = pytest.mark.integration


def _chipq(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHIPQ_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "chipq_pipelines.cli", *args], capture_output=True, text=True, env=env, timeout=180
    )


@pytest.fixture
def scratch_home(tmp_path: Path, kafka_bootstrap: str) -> Path:
    """A CHIPQ_HOME of its own that reuses the cached jars (no second download)."""
    home = tmp_path / "home"
    (home / "kafka").mkdir(parents=True)
    (home / "kafka" / "lib").symlink_to(ChipqHome.from_env().kafka_lib)
    return home


def _broker_pids(home: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"kafka.Kafka {home}"], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def test_up_twice_status_down(scratch_home: Path) -> None:
    port = str(free_port())
    status = _chipq("kafka", "status", "--port", port, home=scratch_home)
    assert status.returncode != 0, "status must say 'not running' before up"

    first = _chipq("kafka", "up", "--port", port, home=scratch_home)
    assert first.returncode == 0, first.stderr
    assert f"is up at 127.0.0.1:{port}" in first.stdout
    try:
        second = _chipq("kafka", "up", "--port", port, home=scratch_home)
        assert second.returncode == 0, second.stderr
        assert "already runs" in second.stdout
        assert len(_broker_pids(scratch_home)) == 1, "a second `up` must not start a second broker"

        status = _chipq("kafka", "status", "--port", port, home=scratch_home)
        assert status.returncode == 0
        assert f"127.0.0.1:{port}" in status.stdout
    finally:
        down = _chipq("kafka", "down", "--port", port, home=scratch_home)
    assert down.returncode == 0, down.stderr
    assert "stopped" in down.stdout
    assert _broker_pids(scratch_home) == []
    assert _chipq("kafka", "status", "--port", port, home=scratch_home).returncode != 0
    again = _chipq("kafka", "down", "--port", port, home=scratch_home)
    assert again.returncode == 0 and "no chipq broker" in again.stdout


def test_status_and_down_without_port_cover_every_broker_of_the_home(scratch_home: Path) -> None:
    first = free_port()
    ports = [str(p) for p in sorted({first, next(p for p in iter(free_port, None) if p != first)})]
    try:
        for port in ports:
            up = _chipq("kafka", "up", "--port", port, home=scratch_home)
            assert up.returncode == 0, up.stderr
        assert len(_broker_pids(scratch_home)) == 2

        status = _chipq("kafka", "status", home=scratch_home)
        assert status.returncode == 0, status.stderr
        assert [line.split()[:2] for line in status.stdout.splitlines()[:2]] == [
            ["running", f"127.0.0.1:{port}"] for port in ports
        ]
        assert status.stdout.splitlines()[-1] == (
            f"export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}"
        )
    finally:
        down = _chipq("kafka", "down", home=scratch_home)
    assert down.returncode == 0, down.stderr
    assert sorted(down.stdout.splitlines()) == [f"Kafka at 127.0.0.1:{port} stopped" for port in ports]
    assert _broker_pids(scratch_home) == []
    status = _chipq("kafka", "status", home=scratch_home)
    assert status.returncode == 1
    assert [line.split()[:2] for line in status.stdout.splitlines()] == [
        ["stopped", f"127.0.0.1:{port}"] for port in ports
    ]
    assert "not running" in status.stderr


def test_port_held_by_another_process_is_a_clear_error(scratch_home: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = str(squatter.getsockname()[1])
        result = _chipq("kafka", "up", "--port", port, home=scratch_home)
    assert result.returncode != 0
    assert f"port {port}" in result.stderr and "another process" in result.stderr
    assert _broker_pids(scratch_home) == []


def test_produce_and_consume_on_the_real_broker(
    kafka_bootstrap: str, kafka_broker_info: dict[str, str], new_topic, new_group
) -> None:
    topic = new_topic("roundtrip", partitions=3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True, "acks": "all"})
    delivered: list[tuple[int, int]] = []

    def on_delivery(err, msg) -> None:
        assert err is None, err
        delivered.append((msg.partition(), msg.offset()))

    sent = {f"inspection-{i}".encode(): f"payload-{i}".encode() for i in range(2000)}
    for key, value in sent.items():
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert len(delivered) == len(sent)
    assert {p for p, _ in delivered} == {0, 1, 2}, "keys must spread over the 3 partitions"

    consumer = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": new_group("rt"), "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    received: dict[bytes, bytes] = {}
    try:
        for _ in range(200):
            for msg in consumer.consume(500, timeout=1.0):
                assert msg.error() is None, msg.error()
                received[msg.key()] = msg.value()
            if len(received) == len(sent):
                break
    finally:
        consumer.close()
    assert received == sent
    print(f"\n{kafka_broker_info['origin']}: produced {len(sent)}, consumed {len(received)}")
