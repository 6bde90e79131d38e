"""The broker chipq starts itself: lifecycle through the CLI, and real traffic."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from chipq_pipelines.events.topics import INSPECTION_TOPIC, load_topics
from chipq_pipelines.local_cluster import free_consecutive_ports
from chipq_pipelines.local_kafka import ensure_jars, free_port
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


def test_three_broker_cluster_up_status_restart_down(tmp_path: Path) -> None:
    """`chipq kafka up --brokers 3`: one cluster, topics replicated 3 times with min.insync.replicas=2, all stopped."""
    home = tmp_path / "home"
    (home / "kafka").mkdir(parents=True)
    (home / "kafka" / "lib").symlink_to(ensure_jars(ChipqHome.from_env().kafka_lib, quiet=True))
    first = free_consecutive_ports(3)
    ports = [first, first + 1, first + 2]
    bootstrap = ",".join(f"127.0.0.1:{port}" for port in ports)
    declared = load_topics()
    try:
        up = _chipq("kafka", "up", "--brokers", "3", "--port", str(first), home=home)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"is up: 3 brokers at {bootstrap}" in up.stdout
        assert f"created {INSPECTION_TOPIC} (6 partitions, replication 3, min.insync.replicas=2," in up.stdout
        assert up.stdout.splitlines()[-1] == f"export KAFKA_BOOTSTRAP_SERVERS={bootstrap}"
        assert len(_broker_pids(home)) == 3

        admin = AdminClient({"bootstrap.servers": bootstrap})
        metadata = admin.list_topics(timeout=10)
        assert sorted(metadata.brokers) == [1, 2, 3]
        assert len({metadata.cluster_id, *(_cluster_id(home, port) for port in ports)}) == 1, "one cluster id"
        for spec in declared.topics:
            partitions = metadata.topics[spec.name].partitions
            assert len(partitions) == spec.partitions
            assert {len(p.replicas) for p in partitions.values()} == {3}, spec.name
        resources = [ConfigResource(ResourceType.TOPIC, spec.name) for spec in declared.topics]
        for resource, future in admin.describe_configs(resources).items():
            assert future.result(timeout=10)["min.insync.replicas"].value == "2", resource.name

        # Kafka's internal topics, created on first use, get 3 replicas too.
        sent = _produce(bootstrap, INSPECTION_TOPIC, 300)
        assert _consume(bootstrap, INSPECTION_TOPIC, "cluster-test", len(sent)) == sent
        transactional = Producer({"bootstrap.servers": bootstrap, "transactional.id": "cluster-test"})
        transactional.init_transactions(30)
        internal = admin.list_topics(timeout=10).topics
        for topic in ("__consumer_offsets", "__transaction_state"):
            assert {len(p.replicas) for p in internal[topic].partitions.values()} == {3}, topic

        again = _chipq("kafka", "up", "--port", str(first), home=home)
        assert again.returncode == 0, again.stderr
        assert f"already runs: 3 brokers at {bootstrap}" in again.stdout
        assert "0 created, 4 already there" in again.stdout
        assert len(_broker_pids(home)) == 3, "a second `up` must not start more brokers"

        status = _chipq("kafka", "status", home=home)
        assert status.returncode == 0, status.stderr
        lines = status.stdout.splitlines()
        assert [line.split(" (")[0] for line in lines[:3]] == [f"running 127.0.0.1:{port}" for port in ports]
        assert [f"node {i} of 3," in line for i, line in enumerate(lines[:3], start=1)] == [True] * 3
        assert lines[-1] == f"export KAFKA_BOOTSTRAP_SERVERS={bootstrap}"

        # One node down: the others keep serving; `status` says so and `up` brings it back with its data.
        segments = _segments(home, ports[1])
        down_one = _chipq("kafka", "down", "--port", str(ports[1]), home=home)
        assert down_one.stdout.strip() == f"Kafka at 127.0.0.1:{ports[1]} stopped"
        status = _chipq("kafka", "status", home=home)
        assert f"stopped 127.0.0.1:{ports[1]} (node 2 of 3," in status.stdout
        still_up = f"127.0.0.1:{first},127.0.0.1:{ports[2]}"
        assert status.stdout.splitlines()[-1] == f"export KAFKA_BOOTSTRAP_SERVERS={still_up}"
        back = _chipq("kafka", "up", "--port", str(first), "--no-topics", home=home)
        assert back.returncode == 0, back.stderr
        assert f"is up: 3 brokers at {bootstrap}" in back.stdout and "; started node 2\n" in back.stdout
        assert _segments(home, ports[1]) == segments, "the restarted node must keep its data"

        # The whole cluster stopped and started again: the records are still there.
        assert _chipq("kafka", "down", home=home).returncode == 0
        assert _broker_pids(home) == []
        restarted = _chipq("kafka", "up", "--port", str(first), home=home)
        assert restarted.returncode == 0, restarted.stderr
        assert f"is up: 3 brokers at {bootstrap}" in restarted.stdout
        assert _consume(bootstrap, INSPECTION_TOPIC, "cluster-test-after-restart", len(sent)) == sent
    finally:
        down = _chipq("kafka", "down", home=home)
    assert down.returncode == 0, down.stderr
    assert sorted(down.stdout.splitlines()) == [f"Kafka at 127.0.0.1:{port} stopped" for port in ports]
    assert _broker_pids(home) == []
    status = _chipq("kafka", "status", home=home)
    assert status.returncode == 1
    assert [line.split(" (")[0] for line in status.stdout.splitlines()] == [
        f"stopped 127.0.0.1:{port}" for port in ports
    ]


def _cluster_id(home: Path, port: int) -> str:
    meta = (home / "kafka" / f"broker-{port}" / "data" / "meta.properties").read_text()
    return next(line.split("=", 1)[1] for line in meta.splitlines() if line.startswith("cluster.id="))


def _segments(home: Path, port: int) -> dict[str, int]:
    """The node's partition log segments of the inspection topic and their sizes."""
    data = home / "kafka" / f"broker-{port}" / "data"
    return {str(p.relative_to(data)): p.stat().st_size for p in data.glob(f"{INSPECTION_TOPIC}-*/*.log")}


def _produce(bootstrap: str, topic: str, count: int) -> dict[bytes, bytes]:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    sent = {f"key-{i}".encode(): f"value-{i}".encode() for i in range(count)}
    for key, value in sent.items():
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0
    return sent


def _consume(bootstrap: str, topic: str, group: str, count: int) -> dict[bytes, bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    received: dict[bytes, bytes] = {}
    try:
        for _ in range(60):
            for msg in consumer.consume(500, timeout=1.0):
                assert msg.error() is None, msg.error()
                received[msg.key()] = msg.value()
            if len(received) >= count:
                break
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return received
