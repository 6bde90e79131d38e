"""`chipq topics create|describe` on a real cluster, with a topics file of the test's own names."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

pytestmark = pytest.mark.integration


def chipq(bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    return subprocess.run(
        [sys.executable, "-m", "chipq_pipelines.cli", "topics", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.fixture
def topics_file(tmp_path: Path, unique_name: Callable[[str], str]) -> tuple[Path, str, str]:
    events, dlq = unique_name("declared"), unique_name("declared") + ".dlq"
    path = tmp_path / "topics.yaml"
    path.write_text(
        "defaults:\n  replication_factor: 3\n  config: {min.insync.replicas: 2}\n"
        f"topics:\n  - {{name: {events}, partitions: 4, config: {{retention.ms: 86400000}}}}\n"
        f"  - {{name: {dlq}, partitions: 1, config: {{retention.ms: 2592000000}}}}\n"
    )
    return path, events, dlq


def rows(out: str) -> dict[str, list[str]]:
    """``describe``'s table by topic: the cells split on runs of two spaces or more."""
    lines = [line for line in out.splitlines() if line and not line.startswith("cluster ")]
    return {line.split()[0]: [c.strip() for c in line.split("  ") if c.strip()][1:] for line in lines[1:]}


def test_create_is_idempotent_and_describe_shows_what_the_cluster_has(
    kafka_bootstrap: str, topics_file: tuple[Path, str, str]
) -> None:
    path, events, dlq = topics_file
    missing = chipq(kafka_bootstrap, "describe", "--file", str(path))
    assert missing.returncode == 1
    assert rows(missing.stdout)[events][-1] == "MISSING"

    created = chipq(kafka_bootstrap, "create", "--file", str(path))
    assert created.returncode == 0, created.stderr
    # one broker: one replica, and min.insync.replicas 1 so that acks=all works
    assert (
        f"created {events} (4 partitions, replication 1, min.insync.replicas=1, retention.ms=86400000)"
        in created.stdout
    )
    assert f"created {dlq} (1 partitions, replication 1" in created.stdout
    assert "got 1 replica(s) instead of the declared replication factor" in created.stdout
    assert "topics: 2 created, 0 already there" in created.stdout

    again = chipq(kafka_bootstrap, "create", "--file", str(path))
    assert again.returncode == 0 and "topics: 0 created, 2 already there" in again.stdout

    described = chipq(kafka_bootstrap, "describe", "--file", str(path))
    assert described.returncode == 0, described.stdout + described.stderr
    header = described.stdout.splitlines()[0].split()
    assert header == ["topic", "partitions", "replication", "min.insync.replicas", "retention.ms", "status"]
    assert rows(described.stdout)[events] == ["4", "1", "1", "86400000", "ok"]
    assert rows(described.stdout)[dlq] == ["1", "1", "1", "2592000000", "ok"]


def test_describe_flags_a_topic_that_differs_from_its_declaration(
    kafka_bootstrap: str, topics_file: tuple[Path, str, str]
) -> None:
    path, events, dlq = topics_file
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    # created by hand, not as declared: 2 partitions, the broker's default retention
    admin.create_topics([NewTopic(events, num_partitions=2, replication_factor=1)])[events].result(timeout=30)
    assert chipq(kafka_bootstrap, "create", "--file", str(path)).returncode == 0  # creates the DLQ, leaves events be

    described = chipq(kafka_bootstrap, "describe", "--file", str(path))
    assert described.returncode == 1
    assert rows(described.stdout)[events] == [
        "2 (declared 4)",
        "1",
        "1",
        "604800000 (declared 86400000)",
        "MISMATCH",
    ]
    assert rows(described.stdout)[dlq][-1] == "ok"
    assert "does not change existing ones" in described.stderr


def test_an_unreachable_cluster_is_a_clear_error(tmp_path: Path) -> None:
    from chipq_pipelines.local_kafka import free_port

    result = chipq(f"127.0.0.1:{free_port()}", "create")
    assert result.returncode != 0
    assert "did not answer" in result.stderr and "KAFKA_BOOTSTRAP_SERVERS" in result.stderr
