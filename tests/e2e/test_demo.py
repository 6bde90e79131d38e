"""`chipq demo` (what `make demo` runs): end to end, and nothing left running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chipq_pipelines.local_kafka import free_port
from chipq_pipelines.paths import ChipqHome

pytestmark = pytest.mark.e2e


def test_demo_reports_findings_and_leaves_no_broker_behind(tmp_path: Path, kafka_bootstrap: str) -> None:
    home = tmp_path / "home"
    (home / "kafka").mkdir(parents=True)
    (home / "kafka" / "lib").symlink_to(ChipqHome.from_env().kafka_lib)  # jars already fetched by the session
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "CHIPQ_", "DAGSTER_"))}
    env["CHIPQ_HOME"] = str(home)
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "chipq_pipelines.cli", "demo", "--events", "6000", "--seed", "3", "--port", str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "events landed: 6,000 inspection events" in out
    assert "rejected with a reason:" in out
    assert "worst lots by mean quality score" in out
    assert "threshold violations:" in out
    assert f"stopped the demo broker at 127.0.0.1:{port}" in out
    leftover = subprocess.run(["pgrep", "-f", f"kafka.Kafka {home}"], capture_output=True, text=True).stdout
    assert leftover.strip() == "", "the demo must stop the broker it started"
    assert (home / "analytics.duckdb").exists() and (home / "warehouse.duckdb").exists()
