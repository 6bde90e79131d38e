"""A real PostgreSQL server on 127.0.0.1, started by chipq for Dagster's storage in the tests.

Dagster keeps its runs, event log, schedules and concurrency pools in SQLite
under ``DAGSTER_HOME`` by default; a deployment keeps them in PostgreSQL
(``dagster-postgres``). The tests run the real daemon on both, so this module
starts Debian's PostgreSQL (``scripts/install-postgres.sh`` installs it) the
way ``local_kafka`` starts Kafka: ``initdb`` into a folder of its own, then
``pg_ctl`` on a free port of 127.0.0.1, TCP only, password authentication
(scram-sha-256) for one superuser whose password is generated here.

PostgreSQL refuses to run as root. Run as root, chipq runs its programs as the
unprivileged ``postgres`` user Debian's package creates (``CHIPQ_POSTGRES_OS_USER``
names another), which then owns the server's folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chipq_pipelines.errors import ChipqError
from chipq_pipelines.local_kafka import pid_alive, port_is_free

START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
#: where Debian's packages put each major version's server programs
DEBIAN_LIB = Path("/usr/lib/postgresql")
INSTALL_HINT = "run scripts/install-postgres.sh (or: apt-get install postgresql)"
SUPERUSER = "chipq"
_DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class LocalPostgresError(ChipqError, RuntimeError):
    """The local PostgreSQL server could not be found, started, used or stopped."""


def find_bindir() -> Path:
    """The folder of ``initdb``/``pg_ctl``: ``CHIPQ_POSTGRES_BIN``, else Debian's newest, else PATH.

    Debian does not put ``initdb`` on PATH (its wrappers manage clusters of their own), so the
    versioned folder under ``/usr/lib/postgresql`` is looked at first.
    """
    given = os.environ.get("CHIPQ_POSTGRES_BIN", "").strip()
    if given:
        if not (Path(given) / "pg_ctl").is_file():
            raise LocalPostgresError(f"CHIPQ_POSTGRES_BIN={given} has no pg_ctl")
        return Path(given)
    versions = sorted(
        (path for path in DEBIAN_LIB.glob("*/bin") if (path / "pg_ctl").is_file() and path.parent.name.isdigit()),
        key=lambda path: int(path.parent.name),
    )
    if versions:
        return versions[-1]
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    raise LocalPostgresError(f"PostgreSQL's server programs (initdb, pg_ctl) are not installed: {INSTALL_HINT}")


def _os_user() -> str | None:
    """The user the server runs as: None (this one) unless this process is root."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("CHIPQ_POSTGRES_OS_USER", "").strip() or "postgres"
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise LocalPostgresError(
            f"PostgreSQL refuses to run as root and there is no user {name!r} to run it as: {INSTALL_HINT} "
            "(its package creates the postgres user), or set CHIPQ_POSTGRES_OS_USER to an unprivileged user"
        ) from None
    return name


@dataclass
class LocalPostgres:
    """One local server: its port and its folder (data, log, connection settings)."""

    port: int
    instance_dir: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.instance_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.instance_dir / "postgres.log"

    @property
    def _meta_file(self) -> Path:
        return self.instance_dir / "instance.json"

    @property
    def password(self) -> str:
        """The superuser's password, generated when the cluster was created."""
        return str(self._meta()["password"])

    def _meta(self) -> dict[str, Any]:
        try:
            meta: dict[str, Any] = json.loads(self._meta_file.read_text())
        except (OSError, ValueError):
            raise LocalPostgresError(
                f"{self.instance_dir} holds no cluster created by chipq; start() creates one"
            ) from None
        return meta

    # ------------------------------------------------------------ connecting

    def env(self, db_name: str = "postgres") -> dict[str, str]:
        """The ``DAGSTER_PG_*`` variables that point a Dagster instance (dagster.yaml) at ``db_name`` here."""
        return {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": SUPERUSER,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": db_name,
        }

    @contextlib.contextmanager
    def connect(self, db_name: str = "postgres") -> Iterator[Any]:
        """A psycopg2 connection (autocommit) to ``db_name``, closed on exit."""
        import psycopg2

        try:
            connection = psycopg2.connect(
                host="127.0.0.1",
                port=self.port,
                user=SUPERUSER,
                password=self.password,
                dbname=db_name,
                connect_timeout=5,
            )
        except psycopg2.Error as exc:
            raise LocalPostgresError(f"cannot connect to PostgreSQL on 127.0.0.1:{self.port}: {exc}") from exc
        connection.autocommit = True
        try:
            yield connection
        finally:
            connection.close()

    def query(self, db_name: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """The rows of one statement (bound ``params``) in ``db_name``."""
        with self.connect(db_name) as connection, connection.cursor() as cursor:
            cursor.execute(sql, params or None)  # no parameters: a literal % stays a %
            return list(cursor.fetchall()) if cursor.description else []

    def create_database(self, db_name: str) -> str:
        """Create an empty database ``db_name`` (lower-case letters, digits, ``_``); return its name."""
        if not _DB_NAME.fullmatch(db_name):
            raise LocalPostgresError(f"not a database name chipq creates: {db_name!r}")
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{db_name}"')  # a checked identifier: DDL takes no parameters
        return db_name

    def drop_database(self, db_name: str) -> None:
        """Drop ``db_name`` and end the sessions still connected to it."""
        if not _DB_NAME.fullmatch(db_name):
            raise LocalPostgresError(f"not a database name chipq creates: {db_name!r}")
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')

    # ------------------------------------------------------------ processes

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run one of PostgreSQL's programs, as the unprivileged user when this process is root."""
        program = str(find_bindir() / args[0])
        user = _os_user()
        command = [program, *args[1:]] if user is None else ["runuser", "-u", user, "--", program, *args[1:]]
        proc = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd="/")
        if check and proc.returncode != 0:
            raise LocalPostgresError(f"{' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc

    def pid(self) -> int | None:
        """The postmaster's pid while it runs (from ``postmaster.pid``), else None."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def is_running(self) -> bool:
        return (
            self.pid() is not None
            and self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), check=False).returncode == 0
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log yet)"

    def _prepare_folder(self) -> None:
        """The instance folder, owned by the user the server runs as (PostgreSQL checks its data's owner)."""
        self.instance_dir.mkdir(parents=True, exist_ok=True)
        user = _os_user()
        if user is not None:
            shutil.chown(self.instance_dir, user=user, group=pwd.getpwnam(user).pw_gid)
            reach = subprocess.run(["runuser", "-u", user, "--", "test", "-w", str(self.instance_dir)], check=False)
            if reach.returncode != 0:
                raise LocalPostgresError(
                    f"user {user} cannot write {self.instance_dir} (a parent folder is closed to it): "
                    "put the server's folder somewhere every user can reach, such as under /tmp"
                )

    def _init_cluster(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        password = secrets.token_urlsafe(24)
        pwfile = self.instance_dir / ".initdb-password"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        user = _os_user()
        if user is not None:
            shutil.chown(pwfile, user=user)
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        self._meta_file.write_text(json.dumps({"password": password, "user": SUPERUSER}))
        self._meta_file.chmod(0o600)

    def start(self, timeout: int = START_TIMEOUT_S) -> bool:
        """Create the cluster if needed, start the server and wait until it answers; False if it already ran."""
        if self.pid() is not None:
            if self.is_running():
                return False
            raise LocalPostgresError(
                f"a PostgreSQL process (pid {self.pid()}) of {self.instance_dir} runs but does not answer on "
                f"127.0.0.1:{self.port}; stop it first.\n{self.log_tail()}"
            )
        if not port_is_free(self.port):
            raise LocalPostgresError(f"port {self.port} on 127.0.0.1 is held by another process: pick another port")
        find_bindir()
        self._prepare_folder()
        self._init_cluster()
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories=''"
        start = ["pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", str(timeout)]
        proc = self._run(*start, "-o", options, check=False)
        if proc.returncode != 0:
            raise LocalPostgresError(
                f"PostgreSQL did not start on 127.0.0.1:{self.port} ({proc.stdout.strip()} {proc.stderr.strip()}). "
                f"Last log lines ({self.log_file}):\n{self.log_tail()}"
            )
        deadline = time.monotonic() + timeout
        while not self.is_running():
            if time.monotonic() > deadline:
                self.stop()
                raise LocalPostgresError(f"PostgreSQL did not answer on 127.0.0.1:{self.port}:\n{self.log_tail()}")
            time.sleep(0.2)
        return True

    def stop(self, timeout: int = STOP_TIMEOUT_S) -> bool:
        """Stop the server (fast shutdown: sessions are ended, data is kept); False if none ran."""
        if self.pid() is None:
            return False
        proc = self._run(
            "pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(timeout), check=False
        )
        if proc.returncode != 0 and self.pid() is not None:
            self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w", "-t", str(timeout))
        return True
