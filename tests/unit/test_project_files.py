"""The files users run besides the code: Dagster workspace, docker-compose."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chipq_pipelines.paths import ChipqHome
from chipq_pipelines.runner import ensure_dagster_home

ROOT = Path(__file__).resolve().parents[2]


def test_dagster_definitions_validate() -> None:
    ensure_dagster_home()  # a fresh clone has no DAGSTER_HOME folder yet
    dagster = Path(sys.executable).with_name("dagster")
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr


def _compose_command() -> list[str] | None:
    """`docker compose`, with the plugin `make compose-plugin` built if the client lacks one."""
    docker = shutil.which("docker")
    if docker is None:
        return None
    if subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    config_dir = ChipqHome.from_env().root / "tools" / "docker"
    if (config_dir / "cli-plugins" / "docker-compose").exists():
        return [docker, "--config", str(config_dir), "compose"]
    pytest.fail("the docker client has no compose plugin: run `make compose-plugin` (needs Go)")


def test_docker_compose_file_is_valid() -> None:
    compose = _compose_command()
    if compose is None:
        pytest.skip("no docker client on this machine")
    result = subprocess.run(
        [*compose, "-f", "docker-compose.yml", "config", "--quiet"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    services = subprocess.run(
        [*compose, "-f", "docker-compose.yml", "config", "--services"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    assert {"kafka", "schema-registry", "postgres", "dagster-webserver", "dagster-daemon"} <= set(services)


def test_docker_compose_publishes_ports_on_loopback_only() -> None:
    """Kafka, the registry and the Dagster UI have no authentication: never reachable from the network."""
    compose = _compose_command()
    if compose is None:
        pytest.skip("no docker client on this machine")
    result = subprocess.run(
        [*compose, "-f", "docker-compose.yml", "config", "--format", "json"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    published = {name: service.get("ports", []) for name, service in json.loads(result.stdout)["services"].items()}
    assert {"kafka", "schema-registry", "dagster-webserver"} <= {name for name, ports in published.items() if ports}
    for name, ports in published.items():
        for port in ports:
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond 127.0.0.1"
