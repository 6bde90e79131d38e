"""An isolated pipeline environment per test on the session's real broker.

Each test gets its own topics (3 partitions), pipeline consumer group,
CHIPQ_HOME (warehouse, snapshot) and DAGSTER_HOME, so tests never see each
other's events or state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.topics import ensure_topics


@dataclass
class PipelineEnv:
    bootstrap: str
    home: Path
    inspection_topic: str
    quality_topic: str
    group: str

    @property
    def kafka_config(self) -> KafkaConfig:
        return KafkaConfig(bootstrap_servers=self.bootstrap)

    @property
    def warehouse(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def snapshot(self) -> Path:
        return self.home / "analytics.duckdb"

    @property
    def env(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "CHIPQ_HOME": str(self.home),
            "DAGSTER_HOME": str(self.home / "dagster"),
            "CHIPQ_INSPECTION_TOPIC": self.inspection_topic,
            "CHIPQ_QUALITY_TOPIC": self.quality_topic,
            "CHIPQ_PIPELINE_GROUP": self.group,
        }


@pytest.fixture
def pipeline_env(
    tmp_path: Path, kafka_bootstrap: str, unique_name: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[PipelineEnv]:
    env = PipelineEnv(
        bootstrap=kafka_bootstrap,
        home=tmp_path / "chipq",
        inspection_topic=unique_name("inspection"),
        quality_topic=unique_name("quality"),
        group=unique_name("chipq-dagster"),
    )
    env.home.mkdir()
    ensure_topics(env.kafka_config, partitions=3, topics=[env.inspection_topic, env.quality_topic])
    for name, value in env.env.items():
        monkeypatch.setenv(name, value)
    yield env
