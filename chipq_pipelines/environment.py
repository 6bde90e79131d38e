"""One isolated pipeline: its own topics, consumer group, CHIPQ_HOME and DAGSTER_HOME.

Several pipelines can share one Kafka cluster (a staging copy next to
production, the tests, the benchmarks) when each has its own topics, group
and local state. ``PipelineEnv.env`` is the set of environment variables that
points every chipq command and the Dagster definitions at one of them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

from chipq_pipelines.events.config import KafkaConfig

#: Every variable that points chipq somewhere; ``apply`` clears the ones a PipelineEnv does not set.
PIPELINE_ENV_VARS = (
    "KAFKA_BOOTSTRAP_SERVERS",
    "CHIPQ_HOME",
    "DAGSTER_HOME",
    "CHIPQ_INSPECTION_TOPIC",
    "CHIPQ_QUALITY_TOPIC",
    "CHIPQ_PIPELINE_GROUP",
    "CHIPQ_WAREHOUSE",
    "CHIPQ_ANALYST_SNAPSHOT",
    "SCHEMA_REGISTRY_URL",
)


def inspection_topic_from_env() -> str:
    """The inspection topic this environment's pipeline reads: ``CHIPQ_INSPECTION_TOPIC``, else the platform's."""
    from chipq_pipelines.events.topics import INSPECTION_TOPIC

    return os.environ.get("CHIPQ_INSPECTION_TOPIC", "").strip() or INSPECTION_TOPIC


@dataclass
class PipelineEnv:
    bootstrap: str
    home: Path
    inspection_topic: str
    quality_topic: str
    group: str
    #: further variables for the pipeline (e.g. KAFKA_SASL_*)
    extra: dict[str, str] = field(default_factory=dict)
    #: the KafkaConfig of the caller's own clients (default: plaintext to ``bootstrap``)
    config: KafkaConfig | None = None

    @classmethod
    def create(
        cls,
        bootstrap: str,
        home: Path,
        *,
        prefix: str = "",
        partitions: int = 3,
        config: KafkaConfig | None = None,
        **extra: str,
    ) -> PipelineEnv:
        """A new pipeline under ``home`` with fresh topic and group names; its topics are created."""
        from chipq_pipelines.events.topics import ensure_topics

        tag = uuid.uuid4().hex[:12]
        env = cls(
            bootstrap=bootstrap,
            home=home,
            inspection_topic=f"{prefix}inspection-{tag}",
            quality_topic=f"{prefix}quality-{tag}",
            group=f"{prefix}chipq-dagster-{tag}",
            extra=dict(extra),
            config=config,
        )
        env.home.mkdir(parents=True, exist_ok=True)
        ensure_topics(env.kafka_config, partitions, topics=[env.inspection_topic, env.quality_topic])
        return env

    @property
    def kafka_config(self) -> KafkaConfig:
        return self.config or KafkaConfig(bootstrap_servers=self.bootstrap)

    @property
    def warehouse(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def snapshot(self) -> Path:
        return self.home / "analytics.duckdb"

    @property
    def env(self) -> dict[str, str]:
        """The environment variables that point chipq at this pipeline."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "CHIPQ_HOME": str(self.home),
            "DAGSTER_HOME": str(self.home / "dagster"),
            "CHIPQ_INSPECTION_TOPIC": self.inspection_topic,
            "CHIPQ_QUALITY_TOPIC": self.quality_topic,
            "CHIPQ_PIPELINE_GROUP": self.group,
            **self.extra,
        }

    def apply(self, environ: MutableMapping[str, str] | None = None) -> None:
        """Point ``environ`` (default: this process) at this pipeline, clearing other pipeline variables."""
        target = os.environ if environ is None else environ
        for name in PIPELINE_ENV_VARS:
            target.pop(name, None)
        target.update(self.env)
