"""Shared fixtures: a real Kafka broker for the session, fresh names per test.

The broker is the external cluster in ``KAFKA_BOOTSTRAP_SERVERS`` when that is
set, otherwise one started by ``chipq_pipelines.local_kafka`` on a free port
(jars cached under ``$CHIPQ_HOME``) and stopped when the session ends. A test
that needs Kafka fails, never skips, when no broker can be had. Tests that keep
Dagster's storage in PostgreSQL get a fresh database of one real server that
the session starts when the first of them asks (``chipq_pipelines.local_postgres``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chipq_pipelines.environment import PIPELINE_ENV_VARS, PipelineEnv
from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.local_kafka import LocalKafka, free_port, kafka_version, metadata_answers
from chipq_pipelines.local_postgres import LocalPostgres
from chipq_pipelines.paths import REPO_ROOT, ChipqHome

_BROKER_INFO: dict[str, str] = {}
_POSTGRES_INFO: dict[str, str] = {}


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a real, running Kafka broker."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        if not metadata_answers(external, timeout=10):
            pytest.fail(f"KAFKA_BOOTSTRAP_SERVERS={external} does not answer metadata requests")
        _BROKER_INFO.update(bootstrap=external, origin="external cluster (KAFKA_BOOTSTRAP_SERVERS)")
        yield external
        return
    home = ChipqHome.from_env()
    instance_dir = Path(tempfile.mkdtemp(prefix="chipq-test-kafka-"))
    broker = LocalKafka(port=free_port(), instance_dir=instance_dir, lib_dir=home.kafka_lib)
    try:
        broker.start()
    except Exception as exc:  # a test that needs Kafka fails, it never skips
        pytest.fail(f"could not start the local Kafka broker: {exc}")
    _BROKER_INFO.update(
        bootstrap=broker.bootstrap,
        origin=f"Apache Kafka {kafka_version(home.kafka_lib)} started by chipq (KRaft, {instance_dir})",
        log=str(broker.log_file),
    )
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
        shutil.rmtree(instance_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_broker_info(kafka_bootstrap: str) -> dict[str, str]:
    return dict(_BROKER_INFO)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """One real PostgreSQL server on a free port of 127.0.0.1, in a temporary folder, for the session.

    Debian's server programs are installed by the repo's script when missing (a fresh machine).
    """
    installed = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "install-postgres.sh")], capture_output=True, text=True
    )
    if installed.returncode != 0:
        pytest.fail(f"PostgreSQL is needed and could not be installed:\n{installed.stdout}\n{installed.stderr}")
    instance_dir = Path(tempfile.mkdtemp(prefix="chipq-test-postgres-"))
    server = LocalPostgres(port=free_port(), instance_dir=instance_dir)
    try:
        server.start()
    except Exception as exc:  # a test that needs PostgreSQL fails, it never skips
        shutil.rmtree(instance_dir, ignore_errors=True)
        pytest.fail(f"could not start the local PostgreSQL server: {exc}")
    [(version,)] = server.query("postgres", "SHOW server_version")
    _POSTGRES_INFO.update(origin=f"PostgreSQL {version} started by chipq ({instance_dir})", address=server.address)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(instance_dir, ignore_errors=True)


@pytest.fixture
def postgres_database(postgres_server: LocalPostgres) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL server (dropped afterwards)."""
    name = postgres_server.create_database(f"chipq_test_{uuid.uuid4().hex[:12]}")
    try:
        yield name
    finally:
        postgres_server.drop_database(name)


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Factory of names no other test uses (topics, groups, lots)."""

    def make(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make


@pytest.fixture
def make_pipeline_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., PipelineEnv]:
    """Factory: an isolated pipeline (``PipelineEnv.create``) under this test's tmp_path, its env vars set."""
    count = 0

    def make(bootstrap: str, config: KafkaConfig | None = None, **extra: str) -> PipelineEnv:
        nonlocal count
        count += 1
        env = PipelineEnv.create(bootstrap, tmp_path / f"chipq-{count}", config=config, **extra)
        for name in PIPELINE_ENV_VARS:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.env.items():
            monkeypatch.setenv(name, value)
        return env

    return make


@pytest.fixture
def new_topic(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> Callable[..., str]:
    """Factory: create a fresh topic with an explicit partition count."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def make(prefix: str = "test", partitions: int = 3) -> str:
        name = unique_name(prefix)
        futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        futures[name].result(timeout=30)
        return name

    return make


@pytest.fixture
def new_group(unique_name: Callable[[str], str]) -> Callable[[str], str]:
    """Factory: a consumer group id nobody has used."""
    return lambda prefix="group": unique_name(prefix)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _BROKER_INFO:
        terminalreporter.write_sep("-", "Kafka used by these tests")
        terminalreporter.write_line(f"{_BROKER_INFO['origin']} at {_BROKER_INFO['bootstrap']}")
    if _POSTGRES_INFO:
        terminalreporter.write_sep("-", "PostgreSQL used by these tests (Dagster's storage)")
        terminalreporter.write_line(f"{_POSTGRES_INFO['origin']} at {_POSTGRES_INFO['address']}")
