"""The platform's topics: their names, and their settings as declared in ``topics.yaml``.

Brokers run with ``auto.create.topics.enable=false``: a topic exists because
``chipq kafka up``, ``chipq topics create`` or ``ensure_topics`` created it with
the partitions, replication and retention declared here
(``chipq_pipelines.events.topic_admin`` talks to the cluster).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.errors import TopicsFileError

INSPECTION_TOPIC = "chip-quality.inspection.events"
QUALITY_TOPIC = "chip-quality.quality.events"
EVENT_TOPICS = (INSPECTION_TOPIC, QUALITY_TOPIC)
#: Partitions of a topic the file does not declare (a test's or an isolated environment's own).
DEFAULT_PARTITIONS = 6
#: The declared topics, shipped with the package.
TOPICS_FILE = Path(__file__).with_name("topics.yaml")

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
MIN_ISR = "min.insync.replicas"


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return f"{topic}.dlq"


@dataclass(frozen=True)
class TopicSpec:
    """One topic as it should be on a cluster."""

    name: str
    partitions: int
    replication_factor: int
    #: Kafka topic-level settings (``retention.ms``, ``min.insync.replicas``, ...), as Kafka shows them: text.
    config: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    def with_replication(self, replication_factor: int) -> TopicSpec:
        """This topic on a cluster that replicates it ``replication_factor`` times.

        ``min.insync.replicas`` stays below the replica count (at least 1), so that
        ``acks=all`` writes go on while one replica is away; with one replica it is 1.
        """
        config = dict(self.config)
        if MIN_ISR in config:
            config[MIN_ISR] = str(min(int(config[MIN_ISR]), max(1, replication_factor - 1)))
        return replace(self, replication_factor=replication_factor, config=config)


@dataclass(frozen=True)
class DeclaredTopics:
    """The contents of a topics file: its declared topics and the defaults for any other topic."""

    path: Path
    topics: tuple[TopicSpec, ...]
    default_replication_factor: int
    default_config: Mapping[str, str]

    def names(self) -> list[str]:
        return [spec.name for spec in self.topics]

    def get(self, name: str) -> TopicSpec | None:
        return next((spec for spec in self.topics if spec.name == name), None)

    def spec_for(self, name: str, partitions: int | None = None) -> TopicSpec:
        """``name`` as declared (``partitions`` overriding its count), or the defaults for a topic not in the file."""
        declared = self.get(name)
        if declared is not None:
            return declared if partitions is None else replace(declared, partitions=partitions)
        return TopicSpec(
            name=name,
            partitions=partitions or DEFAULT_PARTITIONS,
            replication_factor=self.default_replication_factor,
            config=dict(self.default_config),
        )


def replication_factor_for(declared: int, brokers: int, override: int | None = None) -> int:
    """The replication factor on a cluster of ``brokers``: ``override`` when given, else the declared one
    when the cluster has enough brokers, else one replica per broker."""
    if override is not None:
        return override
    return max(1, min(declared, brokers))


# ---------------------------------------------------------------- the file

ConfigValue = str | bool | int | float


def _config_text(config: Mapping[str, ConfigValue]) -> dict[str, str]:
    # Kafka reports every topic setting as text; booleans as true/false.
    return {key: (str(value).lower() if isinstance(value, bool) else str(value)) for key, value in config.items()}


class _Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    replication_factor: PositiveInt = 1
    config: dict[str, ConfigValue] = Field(default_factory=dict)


class _Topic(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    partitions: PositiveInt
    replication_factor: PositiveInt | None = None
    config: dict[str, ConfigValue] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _kafka_name(cls, value: str) -> str:
        if not _TOPIC_NAME.fullmatch(value) or value in (".", ".."):
            raise ValueError(f"{value!r} is not a Kafka topic name (1-249 of letters, digits, '.', '_', '-')")
        return value


class _TopicsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: _Defaults = Field(default_factory=_Defaults)
    topics: list[_Topic] = Field(min_length=1)

    @field_validator("topics")
    @classmethod
    def _unique(cls, topics: list[_Topic]) -> list[_Topic]:
        names = [topic.name for topic in topics]
        if duplicates := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"declared more than once: {', '.join(duplicates)}")
        return topics


def _location(loc: Iterable[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def load_topics(path: str | Path | None = None) -> DeclaredTopics:
    """Read and check a topics file (default: the platform's ``topics.yaml``).

    Raises ``TopicsFileError`` naming the file and the entry at fault
    (``topics[1].partitions: ...``).
    """
    path = Path(path) if path is not None else TOPICS_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TopicsFileError(path, f"cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise TopicsFileError(path, f"is not valid YAML: {exc}") from None
    try:
        parsed = _TopicsFile.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        raise TopicsFileError(path, f"{_location(first['loc'])}: {message}") from None
    defaults = _config_text(parsed.defaults.config)
    topics = tuple(
        TopicSpec(
            name=topic.name,
            partitions=topic.partitions,
            replication_factor=topic.replication_factor or parsed.defaults.replication_factor,
            config={**defaults, **_config_text(topic.config)},
            description=topic.description,
        )
        for topic in parsed.topics
    )
    return DeclaredTopics(path, topics, parsed.defaults.replication_factor, defaults)


# ---------------------------------------------------------------- creating them


def ensure_topics(
    config: KafkaConfig | None = None,
    partitions: int | None = None,
    *,
    topics: Iterable[str] = EVENT_TOPICS,
    with_dlq: bool = True,
    replication_factor: int | None = None,
    timeout: float = 30.0,
    declared: DeclaredTopics | None = None,
) -> list[str]:
    """Create ``topics`` (and their DLQs) where missing, with their declared settings; returns those created.

    ``partitions`` overrides the count of ``topics`` (not of their DLQs); a topic
    that ``topics.yaml`` does not declare gets the file's defaults and
    ``partitions`` (6 when not given), its DLQ 1 partition. Replication: see
    ``replication_factor_for``. Waits until every partition has a leader.
    """
    from chipq_pipelines.events.topic_admin import create_topics

    declared = declared or load_topics()
    specs: list[TopicSpec] = []
    for topic in topics:
        specs.append(declared.spec_for(topic, partitions))
        if with_dlq:
            dlq = dlq_topic(topic)
            specs.append(declared.spec_for(dlq, None if declared.get(dlq) else 1))
    result = create_topics(
        config or KafkaConfig.from_env(), specs, replication_factor=replication_factor, timeout=timeout
    )
    return result.created
