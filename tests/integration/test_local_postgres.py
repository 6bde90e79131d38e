"""The PostgreSQL server chipq starts itself, and `chipq dagster-home` pointing Dagster's storage at one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import yaml

from chipq_pipelines.local_kafka import free_port, port_is_free
from chipq_pipelines.local_postgres import LocalPostgres, LocalPostgresError
from chipq_pipelines.paths import REPO_ROOT
from chipq_pipelines.warehouse.samples import HOSTILE_LOT_IDS

pytestmark = pytest.mark.integration
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-postgres.sh"


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """A folder the server's unprivileged user can reach (pytest's own tmp_path is closed to other users)."""
    path = Path(tempfile.mkdtemp(prefix="chipq-test-pg-"))
    path.chmod(0o755)  # mkdtemp's folder is closed to other users; the server's own folder inside stays 0700
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _owner_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def test_install_script_is_quick_when_postgres_is_there(postgres_server: LocalPostgres) -> None:
    result = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_a_server_starts_unprivileged_with_passwords_keeps_its_data_across_a_restart_and_stops(
    scratch_dir: Path,
) -> None:
    server = LocalPostgres(port=free_port(), instance_dir=scratch_dir / "pg")
    assert server.start() is True
    try:
        assert server.is_running() and not port_is_free(server.port)
        assert server.start() is False  # already running: nothing to do
        pid = server.pid()
        assert pid is not None and _owner_uid(pid) != 0  # PostgreSQL never runs as root
        server.create_database("lots")
        server.query("lots", "CREATE TABLE lot (lot_id text)")
        for lot_id in HOSTILE_LOT_IDS:
            server.query("lots", "INSERT INTO lot VALUES (%s)", (lot_id,))
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(host="127.0.0.1", port=server.port, user="chipq", password="wrong", dbname="lots")
        assert server.stop() is True
        assert server.pid() is None and port_is_free(server.port)
        assert server.stop() is False
        assert server.start() is True
        assert sorted(row[0] for row in server.query("lots", "SELECT lot_id FROM lot")) == sorted(HOSTILE_LOT_IDS)
    finally:
        server.stop()


def test_a_held_port_and_a_bad_database_name_are_refused(postgres_server: LocalPostgres, scratch_dir: Path) -> None:
    other = LocalPostgres(port=postgres_server.port, instance_dir=scratch_dir / "pg")
    with pytest.raises(LocalPostgresError, match=f"port {postgres_server.port} .* held by another process"):
        other.start()
    with pytest.raises(LocalPostgresError, match="not a database name"):
        postgres_server.create_database('x"; DROP DATABASE postgres; --')


def test_as_root_it_names_the_missing_unprivileged_user(
    scratch_dir: Path, monkeypatch: pytest.MonkeyPatch, postgres_server: LocalPostgres
) -> None:
    monkeypatch.setenv("CHIPQ_POSTGRES_OS_USER", "chipq-no-such-user")
    server = LocalPostgres(port=free_port(), instance_dir=scratch_dir / "pg")
    if os.geteuid() == 0:
        with pytest.raises(LocalPostgresError, match=r"refuses to run as root.*chipq-no-such-user.*install-postgres"):
            server.start()
    else:  # not root: the server runs as this user, whatever the variable says
        assert server.start() is True
        server.stop()


# ------------------------------------------------------------ chipq dagster-home


def _chipq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chipq_pipelines.cli", *args], capture_output=True, text=True, env=env, timeout=180
    )


@dg.asset
def probe_asset() -> int:
    """A one-step asset: its run shows where the instance keeps runs."""
    return 1


def test_dagster_home_points_dagster_at_postgresql_and_back(
    postgres_server: LocalPostgres, postgres_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dagster_home = tmp_path / "dagster"
    base = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PG_")}
    base.update(CHIPQ_HOME=str(tmp_path), DAGSTER_HOME=str(dagster_home))
    pg_env = postgres_server.env(postgres_database)

    shown = _chipq("dagster-home", env=base)
    assert shown.returncode == 0, shown.stderr
    assert f"DAGSTER_HOME {dagster_home}: runs, events, schedules and pools in sqlite" in shown.stdout
    sqlite_yaml = (dagster_home / "dagster.yaml").read_text()

    # Without the connection, or with a wrong password, nothing changes and the password is never echoed.
    missing = _chipq("dagster-home", "--storage", "postgres", env=base)
    assert missing.returncode == 1
    assert "DAGSTER_PG_HOST, DAGSTER_PG_PORT, DAGSTER_PG_USER, DAGSTER_PG_PASSWORD, DAGSTER_PG_DB" in missing.stderr
    wrong = _chipq("dagster-home", "--storage", "postgres", env={**base, **pg_env, "DAGSTER_PG_PASSWORD": "nope-x7"})
    assert wrong.returncode == 1
    assert f"could not open its postgres storage in database {postgres_database}" in wrong.stderr
    assert "nope-x7" not in wrong.stderr + wrong.stdout
    assert (dagster_home / "dagster.yaml").read_text() == sqlite_yaml
    assert not (dagster_home / "dagster.yaml.new").exists()

    switched = _chipq("dagster-home", "--storage", "postgres", env={**base, **pg_env})
    assert switched.returncode == 0, switched.stderr
    where = f"in postgres (database {postgres_database} at 127.0.0.1:{postgres_server.port})"
    assert where in switched.stdout and "switched from sqlite" in switched.stdout
    text = (dagster_home / "dagster.yaml").read_text()
    assert pg_env["DAGSTER_PG_PASSWORD"] not in text
    settings = yaml.safe_load(text)
    assert settings["storage"]["postgres"]["postgres_db"]["password"] == {"env": "DAGSTER_PG_PASSWORD"}
    assert settings["concurrency"] == yaml.safe_load(sqlite_yaml)["concurrency"]  # chipq's settings kept
    assert settings["run_coordinator"]["class"] == "QueuedRunCoordinator"

    # A run of that instance is a row of PostgreSQL, and no SQLite file appears.
    for name, value in pg_env.items():
        monkeypatch.setenv(name, value)
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        result = dg.materialize([probe_asset], instance=instance)
    assert result.success
    assert postgres_server.query(postgres_database, "SELECT status FROM runs WHERE run_id = %s", (result.run_id,)) == [
        ("SUCCESS",)
    ]
    assert sorted(dagster_home.rglob("*.db")) == []

    back = _chipq("dagster-home", "--storage", "sqlite", env={**base, **pg_env})
    assert back.returncode == 0, back.stderr
    assert "pools in sqlite" in back.stdout and "switched from postgres" in back.stdout
    assert (dagster_home / "dagster.yaml").read_text() == sqlite_yaml


def test_the_compose_instance_settings_open_on_a_real_postgresql(
    postgres_server: LocalPostgres, postgres_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docker/dagster.yaml, as the compose stack's daemon reads it (only its fixed port 5432 moved to the test's)."""
    settings = (REPO_ROOT / "docker" / "dagster.yaml").read_text()
    assert settings.count("port: 5432") == 1
    (tmp_path / "dagster.yaml").write_text(settings.replace("port: 5432", f"port: {postgres_server.port}"))
    for name, value in postgres_server.env(postgres_database).items():
        monkeypatch.setenv(name, value)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        result = dg.materialize([probe_asset], instance=instance)
    assert result.success
    assert postgres_server.query(postgres_database, "SELECT status FROM runs WHERE run_id = %s", (result.run_id,)) == [
        ("SUCCESS",)
    ]
