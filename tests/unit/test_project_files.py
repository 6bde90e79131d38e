"""The files users run besides the code: Dagster workspace, docker-compose and the image it builds."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

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


def _compose_config() -> dict[str, Any]:
    """docker-compose.yml as `docker compose config` resolves it (anchors merged, defaults filled in)."""
    compose = _compose_command()
    if compose is None:
        pytest.skip("no docker client on this machine")
    result = subprocess.run(
        [*compose, "-f", "docker-compose.yml", "config", "--format", "json"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


SERVICES = {
    "kafka",
    "topics-init",
    "schema-registry",
    "event-processor",
    "inspection-service",
    "postgres",
    "dagster-webserver",
    "dagster-daemon",
}
#: the services that read or write the platform's topics: none may start before they exist
TOPIC_USERS = {"event-processor", "inspection-service", "dagster-webserver", "dagster-daemon"}


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
    assert set(services) >= SERVICES
    assert "zookeeper" not in services  # KRaft: the guide's ZooKeeper service is gone


def test_docker_compose_publishes_ports_on_loopback_only() -> None:
    """Kafka, the registry, the Dagster UI and the inspection service have no authentication."""
    config = _compose_config()
    published = {name: service.get("ports", []) for name, service in config["services"].items()}
    assert {"kafka", "schema-registry", "dagster-webserver", "inspection-service"} <= {
        name for name, ports in published.items() if ports
    }
    for name, ports in published.items():
        for port in ports:
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond 127.0.0.1"


def test_docker_compose_init_service_creates_the_topics_before_anything_uses_them() -> None:
    services = _compose_config()["services"]
    init = services["topics-init"]
    assert init["command"][:3] == ["chipq", "topics", "create"]
    assert init["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:29092"
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert init.get("restart", "no") == "no"  # runs once; `service_completed_successfully` waits for its exit 0
    for name in TOPIC_USERS:
        assert services[name]["depends_on"]["topics-init"]["condition"] == "service_completed_successfully", name


def test_docker_compose_starts_in_order() -> None:
    """Every `service_healthy` wait has a healthcheck to wait on; the processor's is its /readyz."""
    services = _compose_config()["services"]
    for name, service in services.items():
        for dependency, how in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on a service that does not exist: {dependency}"
            if how["condition"] == "service_healthy":
                assert services[dependency].get("healthcheck", {}).get("test"), f"{dependency} has no healthcheck"
    processor = services["event-processor"]
    assert processor["command"] == ["chipq", "processor", "--health-port", "8080"]
    assert "http://127.0.0.1:8080/readyz" in " ".join(processor["healthcheck"]["test"])
    assert services["inspection-service"]["working_dir"] == "/opt/chipq/examples/inspection_service"
    assert services["dagster-daemon"]["depends_on"]["dagster-webserver"]["condition"] == "service_healthy"


def test_docker_compose_dagster_uses_postgresql() -> None:
    services = _compose_config()["services"]
    instance = yaml.safe_load((ROOT / "docker" / "dagster.yaml").read_text())
    postgres_db = instance["storage"]["postgres"]["postgres_db"]
    variables = {key: value["env"] for key, value in postgres_db.items() if isinstance(value, dict)}
    assert set(variables) == {"hostname", "username", "password", "db_name"}
    assert instance["run_coordinator"]["class"] == "QueuedRunCoordinator"
    for name in ("dagster-webserver", "dagster-daemon"):
        service = services[name]
        environment = service["environment"]
        assert all(environment.get(variable) for variable in variables.values()), name
        assert environment["DAGSTER_PG_HOST"] == "postgres" and environment["DAGSTER_HOME"] == "/opt/dagster/home"
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy", name
        assert service["image"] == services["dagster-webserver"]["image"]
    assert environment["DAGSTER_PG_USER"] == services["postgres"]["environment"]["POSTGRES_USER"]
    assert environment["DAGSTER_PG_DB"] == services["postgres"]["environment"]["POSTGRES_DB"]
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "COPY docker/dagster.yaml /opt/dagster/home/dagster.yaml" in dockerfile
    assert 'pip install --no-cache-dir -e ".[deploy]"' in dockerfile


def test_image_extra_pairs_dagster_libraries_with_dagster() -> None:
    """dagster 1.N ships its libraries as 0.(N+16): a range that drifts apart does not install."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dagster = next(d for d in project["dependencies"] if d.startswith("dagster>="))
    minor = int(re.search(r">=1\.(\d+)", dagster).group(1))  # type: ignore[union-attr]
    libraries = [
        d for d in project["optional-dependencies"]["deploy"] if d.startswith(("dagster-postgres", "dagster-k8s"))
    ]
    assert len(libraries) == 2
    for library in libraries:
        assert f">=0.{minor + 16},<0.{minor + 17}" in library, library
