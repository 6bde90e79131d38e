"""Dagster resources: how ops reach Kafka and the DuckDB warehouse.

Configured with ``EnvVar`` at definition time, never ``os.environ`` read at
import, so the same code runs under the daemon, in tests and in Docker.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
from pydantic import Field, create_model

from chipq_pipelines.events.config import ENV_VARS, KafkaConfig, is_secret
from chipq_pipelines.events.topics import INSPECTION_TOPIC, QUALITY_TOPIC
from chipq_pipelines.ingest.reader import PIPELINE_GROUP
from chipq_pipelines.paths import ChipqHome
from chipq_pipelines.warehouse import schema as warehouse_schema


def _connection_fields() -> dict[str, Any]:
    """``KafkaConfig``'s environment-bound fields as resource fields: same names, types and defaults.

    Dagster config has no secret type (a ``SecretStr`` field is rejected), so a secret is a ``str``
    kept out of ``repr``; bound with ``EnvVar`` it shows in the UI and run config by variable name only.
    """
    fields: dict[str, Any] = {}
    for name, variable in ENV_VARS.items():
        field = KafkaConfig.model_fields[name]
        secret = is_secret(name)
        annotation = str | None if secret else field.annotation
        fields[name] = (annotation, Field(default=field.default, description=f"${variable}", repr=not secret))
    return fields


#: The connection part of ``KafkaResource``, generated from ``KafkaConfig`` and ``ENV_VARS``.
_KafkaConnection = create_model(
    "_KafkaConnection", __base__=dg.ConfigurableResource, __module__=__name__, **_connection_fields()
)


class KafkaResource(_KafkaConnection):  # type: ignore[misc,valid-type]
    """The Kafka cluster the platform publishes to (and chipq publishes alerts to).

    The connection fields (``bootstrap_servers``, ``schema_registry_url``, ``security_protocol``,
    ``sasl_*``, ``ssl_ca_location``) are ``KafkaConfig``'s, with its defaults; ``config()`` is that
    ``KafkaConfig``, validated.
    """

    inspection_topic: str = INSPECTION_TOPIC
    quality_topic: str = QUALITY_TOPIC
    #: The group whose committed offsets mirror what the warehouse has landed.
    pipeline_group: str = PIPELINE_GROUP
    #: Records one ingest run reads at most (all partitions together). A run's memory does not
    #: grow with it (chunks are bounded by records and bytes); a smaller cap means more runs.
    max_records_per_run: int = 1_000_000

    def config(self) -> KafkaConfig:
        """The connection fields as a ``KafkaConfig`` (an empty optional one counts as unset)."""
        values = {name: getattr(self, name) for name in ENV_VARS}
        optional = {name for name in ENV_VARS if KafkaConfig.model_fields[name].default is None}
        return KafkaConfig(**{name: (value or None) if name in optional else value for name, value in values.items()})


#: (path, warehouse id) of the warehouses whose schema this process has ensured (a rebuilt one has a new id).
_SCHEMA_ENSURED: set[tuple[str, str | None]] = set()


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file (one writer process at a time) and its analyst snapshot."""

    #: The pipeline's Kafka side: a new warehouse rewinds the group that mirrors what it landed.
    kafka: KafkaResource
    path: str = ""
    snapshot_path: str = ""
    pass_threshold: float = 0.85

    def warehouse_path(self) -> Path:
        return Path(self.path) if self.path else ChipqHome.from_env().warehouse

    def analyst_snapshot_path(self) -> Path:
        return Path(self.snapshot_path) if self.snapshot_path else ChipqHome.from_env().analyst_snapshot

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the warehouse (schema ensured) and always close it, also on error.

        Only ops in the ``duckdb_writer`` pool call this: DuckDB allows one
        writing process per file.
        """
        path = self.warehouse_path()
        if not path.exists():
            self._rewind_group()
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = warehouse_schema.connect(path)
        try:
            # Once per warehouse and process (a run's steps share it). The id stored in the file, not
            # the inode: a warehouse deleted and rebuilt often gets the old file's inode back.
            identity = (str(path), warehouse_schema.warehouse_id(conn))
            if identity[1] is None or identity not in _SCHEMA_ENSURED:
                warehouse_schema.ensure_schema(conn)
                _SCHEMA_ENSURED.add((str(path), warehouse_schema.warehouse_id(conn)))
            yield conn
        finally:
            conn.close()

    def _rewind_group(self) -> None:
        """A new warehouse holds nothing: the group's offsets (which mirror a warehouse that is gone) go back.

        Done before the file exists, so a failure (broker away) leaves no file and the next run retries.
        """
        from chipq_pipelines.ingest.planner import rewind_group

        kafka = self.kafka
        rewound = rewind_group(kafka.config(), kafka.pipeline_group, [kafka.inspection_topic, kafka.quality_topic])
        if rewound:
            dg.get_dagster_logger().warning(
                f"new warehouse at {self.warehouse_path()}: group {kafka.pipeline_group} rewound to the start "
                f"of {', '.join(sorted(rewound))} so that everything is landed again"
            )


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources bound to the environment variables that are set.

    Each set variable becomes an ``EnvVar`` (resolved when a run starts, shown
    in the UI by name only: the SASL password never appears in run config).
    Unset (or blank) ones keep the field's default, as in ``KafkaConfig.from_env``:
    Dagster fails a run on an unset EnvVar.
    """
    kafka = KafkaResource(**_env_vars(KAFKA_ENV), **_env_vars(KAFKA_INT_ENV, dg.EnvVar.int))
    warehouse = WarehouseResource(kafka=kafka, **_env_vars(WAREHOUSE_ENV))
    return {"kafka": kafka, "warehouse": warehouse}


KAFKA_ENV = {
    **ENV_VARS,  # the events library's table: KafkaConfig.from_env reads the same variables
    # Overrides for isolated environments (tests, staging) sharing one cluster.
    "inspection_topic": "CHIPQ_INSPECTION_TOPIC",
    "quality_topic": "CHIPQ_QUALITY_TOPIC",
    "pipeline_group": "CHIPQ_PIPELINE_GROUP",
}
KAFKA_INT_ENV = {"max_records_per_run": "CHIPQ_MAX_RECORDS_PER_RUN"}
WAREHOUSE_ENV = {"path": "CHIPQ_WAREHOUSE", "snapshot_path": "CHIPQ_ANALYST_SNAPSHOT"}


def _env_vars(fields: dict[str, str], make: Callable[[str], Any] = dg.EnvVar) -> dict[str, Any]:
    return {field: make(var) for field, var in fields.items() if os.environ.get(var, "").strip()}
