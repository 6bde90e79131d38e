"""docker-compose's topics-init service: its command, run as compose runs it, readies a broker."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from confluent_kafka.admin import AdminClient

from chipq_pipelines.events.topics import load_topics
from chipq_pipelines.paths import REPO_ROOT

pytestmark = pytest.mark.integration


def test_the_init_service_command_creates_every_declared_topic(kafka_bootstrap: str) -> None:
    """No engine runs containers here: the command is the image's `chipq`, run on the test broker instead."""
    service = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]["topics-init"]
    program, *arguments = service["command"]
    assert program == "chipq"
    env = {**os.environ, **service["environment"], "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    env.pop("SCHEMA_REGISTRY_URL", None)
    chipq = [sys.executable, "-c", "from chipq_pipelines.cli import main; main()"]
    first = subprocess.run([*chipq, *arguments], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    declared = {spec.name for spec in load_topics().topics}
    on_broker = set(AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics)
    assert declared <= on_broker, declared - on_broker
    # `docker compose up` after a restart runs it again: it must succeed on a cluster that has them all
    again = subprocess.run([*chipq, *arguments], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and f"0 created, {len(declared)} already there" in again.stdout, again.stdout
