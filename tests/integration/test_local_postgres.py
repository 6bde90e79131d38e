"""The PostgreSQL server chipq starts itself for Dagster's storage in the tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from chipq_pipelines.local_kafka import free_port, port_is_free
from chipq_pipelines.local_postgres import LocalPostgres, LocalPostgresError
from chipq_pipelines.warehouse.samples import HOSTILE_LOT_IDS

pytestmark = pytest.mark.integration
INSTALL_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install-postgres.sh"


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
