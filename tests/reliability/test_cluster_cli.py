"""`chipq kafka up --brokers 3` through the CLI: one KRaft cluster, replicated topics, restarts, all stopped.

Part of `make reliability` (about a minute: three JVMs on 2 cores), not of `make test`;
the cluster's fault case is in test_cluster_faults.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from chipq_pipelines.events.topics import INSPECTION_TOPIC, load_topics
from chipq_pipelines.local_cluster import free_consecutive_ports
from chipq_pipelines.local_kafka import ensure_jars
from chipq_pipelines.paths import ChipqHome

pytestmark = pytest.mark.reliability


def _chipq(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHIPQ_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "chipq_pipelines.cli", *args], capture_output=True, text=True, env=env, timeout=180
    )


def _broker_pids(home: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"kafka.Kafka {home}"], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


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
