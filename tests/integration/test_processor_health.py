"""`chipq processor --health-port`: the probes Kubernetes uses (deploy/k8s) on the real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.topics import ensure_topics
from chipq_pipelines.local_kafka import free_port
from chipq_pipelines.paths import REPO_ROOT

pytestmark = pytest.mark.integration


def _get(port: int, path: str) -> tuple[int, dict[str, Any]] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=15) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:  # not listening yet
        return None


def test_processor_serves_liveness_and_readiness_and_stops_on_sigterm(kafka_bootstrap: str) -> None:
    ensure_topics(KafkaConfig(bootstrap_servers=kafka_bootstrap), partitions=3)
    port = free_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("SCHEMA_REGISTRY_URL", None)
    chipq = [sys.executable, "-c", "from chipq_pipelines.cli import main; main()"]
    proc = subprocess.Popen(
        [*chipq, "processor", "--health-port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        ready = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            ready = _get(port, "/readyz")
            if ready is not None and ready[0] == 200:
                break
            time.sleep(0.5)
        live = _get(port, "/livez")
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=45)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert ready is not None and ready[0] == 200, ready
    body = ready[1]
    assert body["kafka"] is True and body["running"] is True and body["check"] == "readiness"
    assert {name: c["started"] for name, c in body["consumers"].items()} == {"analytics": True, "notifications": True}
    assert live is not None and live[0] == 200 and live[1]["check"] == "liveness", live
    assert proc.returncode == 0, err.decode()
