"""Topic names and their creation with explicit partition counts.

The local broker has ``auto.create.topics.enable=false``: topics exist because
``ensure_topics`` created them, with the partition count chosen here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from chipq_pipelines.events.config import KafkaConfig

INSPECTION_TOPIC = "chip-quality.inspection.events"
QUALITY_TOPIC = "chip-quality.quality.events"
EVENT_TOPICS = (INSPECTION_TOPIC, QUALITY_TOPIC)
DEFAULT_PARTITIONS = 6


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return f"{topic}.dlq"


def ensure_topics(
    config: KafkaConfig | None = None,
    partitions: int = DEFAULT_PARTITIONS,
    *,
    topics: Iterable[str] = EVENT_TOPICS,
    with_dlq: bool = True,
    replication_factor: int = 1,
    timeout: float = 30.0,
) -> list[str]:
    """Create the event topics (and their DLQs, 1 partition each) if missing; returns those created."""
    config = config or KafkaConfig.from_env()
    admin = AdminClient(config.librdkafka_config())
    wanted: dict[str, int] = {}
    for topic in topics:
        wanted[topic] = partitions
        if with_dlq:
            wanted[dlq_topic(topic)] = 1
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [NewTopic(t, num_partitions=n, replication_factor=replication_factor) for t, n in wanted.items()]
    missing = [t for t in missing if t.topic not in existing]
    created: list[str] = []
    if not missing:
        return created
    for name, future in admin.create_topics(missing, operation_timeout=timeout, request_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    _wait_for_leaders(admin, list(wanted), timeout)
    return created


def _wait_for_leaders(admin: AdminClient, topics: list[str], timeout: float) -> None:
    """A new topic is usable once every partition has a leader (fetches fail before)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metadata = admin.list_topics(timeout=timeout).topics
        if all(
            t in metadata and metadata[t].partitions and all(p.leader >= 0 for p in metadata[t].partitions.values())
            for t in topics
        ):
            return
        time.sleep(0.1)
