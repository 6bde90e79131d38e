"""Where Dagster keeps chipq's runs, event log, schedules and pools: SQLite (default) or PostgreSQL.

``chipq_pipelines/dagster.yaml`` holds chipq's instance settings (the queued run
coordinator, the ``duckdb_writer`` pool, run monitoring, retries) with Dagster's
default storage: SQLite files under ``DAGSTER_HOME``, enough for one machine.
The PostgreSQL variant is those same settings plus a ``storage: postgres:`` block
whose connection comes from the ``DAGSTER_PG_*`` variables when the instance is
opened, so the password is never written to the file. ``chipq dagster-home
--storage postgres`` writes it (after checking the server answers).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Literal

import yaml

from chipq_pipelines.errors import ChipqError

Storage = Literal["sqlite", "postgres"]
INSTANCE_TEMPLATE = Path(__file__).with_name("dagster.yaml")
#: the connection of the PostgreSQL storage, read by Dagster when it opens the instance (as in docker-compose)
PG_ENV_VARS = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB")

POSTGRES_STORAGE = """
# Dagster's run, event-log and schedule storage (and the pools' slots) in PostgreSQL, written by
# `chipq dagster-home --storage postgres`. The connection is read from the environment each time
# the instance is opened (the daemon, the webserver, every run and chipq catch-up need them).
storage:
  postgres:
    postgres_db:
      hostname:
        env: DAGSTER_PG_HOST
      port:
        env: DAGSTER_PG_PORT
      username:
        env: DAGSTER_PG_USER
      password:
        env: DAGSTER_PG_PASSWORD
      db_name:
        env: DAGSTER_PG_DB
      # dagster-postgres is written for psycopg2; SQLAlchemy 2.1 would pick psycopg 3 for "postgresql"
      scheme: postgresql+psycopg2
"""


class DagsterStorageError(ChipqError, RuntimeError):
    """Dagster's instance could not be pointed at the storage asked for."""


def instance_yaml(storage: Storage) -> str:
    """The text of chipq's ``dagster.yaml`` for ``storage``."""
    template = INSTANCE_TEMPLATE.read_text()
    return template if storage == "sqlite" else template.rstrip("\n") + "\n" + POSTGRES_STORAGE


def storage_of(dagster_home: Path) -> Storage:
    """Which storage the ``dagster.yaml`` in ``dagster_home`` uses (none there: Dagster's default, SQLite)."""
    try:
        settings = yaml.safe_load((dagster_home / "dagster.yaml").read_text()) or {}
    except FileNotFoundError:
        return "sqlite"
    storage = settings.get("storage") or {}
    return "postgres" if "postgres" in storage else "sqlite"


def missing_postgres_env(environ: os._Environ[str] | dict[str, str] | None = None) -> list[str]:
    """The ``DAGSTER_PG_*`` variables that are unset (the password may be set empty)."""
    environ = os.environ if environ is None else environ
    return [
        name for name in PG_ENV_VARS if name not in environ or (name != "DAGSTER_PG_PASSWORD" and not environ[name])
    ]


def write_instance(dagster_home: Path, storage: Storage) -> Path:
    """Write chipq's ``dagster.yaml`` for ``storage`` into ``dagster_home`` once Dagster has opened it.

    The new settings are tried first from a file beside the old one: Dagster opens the instance
    (for PostgreSQL: connects and creates or migrates its tables), and only then is the file
    swapped in, so a wrong host or password leaves the working instance as it was.
    """
    import dagster as dg

    if storage == "postgres" and (missing := missing_postgres_env()):
        raise DagsterStorageError(
            f"set {', '.join(missing)} first: Dagster reads the PostgreSQL connection from "
            f"{', '.join(PG_ENV_VARS)} (the password is never written to dagster.yaml)"
        )
    dagster_home.mkdir(parents=True, exist_ok=True)
    trial = dagster_home / "dagster.yaml.new"
    trial.write_text(instance_yaml(storage))
    try:
        with dg.DagsterInstance.from_config(str(dagster_home), config_filename=trial.name) as instance:
            instance.get_runs(limit=1)
    except Exception as exc:
        trial.unlink(missing_ok=True)
        where = ""
        if storage == "postgres":
            env = os.environ
            where = f" in database {env['DAGSTER_PG_DB']} at {env['DAGSTER_PG_HOST']}:{env['DAGSTER_PG_PORT']}"
        raise DagsterStorageError(f"Dagster could not open its {storage} storage{where}: {exc}") from exc
    with contextlib.suppress(FileNotFoundError):
        if (dagster_home / "dagster.yaml").read_text() == trial.read_text():
            trial.unlink()
            return dagster_home / "dagster.yaml"
    trial.replace(dagster_home / "dagster.yaml")
    return dagster_home / "dagster.yaml"
