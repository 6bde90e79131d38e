"""Topics on a cluster: create the declared ones where missing, and compare what exists with the declaration."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.errors import TopicAdminError
from chipq_pipelines.events.topics import TopicSpec, replication_factor_for


@dataclass(frozen=True)
class CreateResult:
    """What ``create_topics`` did, and with which replication."""

    created: list[str]
    existing: list[str]
    replication_factor: int | None
    brokers: int


@dataclass(frozen=True)
class TopicState:
    """One declared topic on a cluster: what is expected there and what there is."""

    expected: TopicSpec
    exists: bool
    partitions: int | None = None
    replication_factor: int | None = None
    #: The cluster's values of the declared config keys.
    config: dict[str, str] = field(default_factory=dict)

    @property
    def differences(self) -> list[str]:
        """Each way the topic differs from its declaration (``partitions 3, declared 6``); empty when it matches."""
        if not self.exists:
            return ["missing"]
        found: list[str] = []
        if self.partitions != self.expected.partitions:
            found.append(f"partitions {self.partitions}, declared {self.expected.partitions}")
        if self.replication_factor != self.expected.replication_factor:
            found.append(f"replication {self.replication_factor}, expected {self.expected.replication_factor}")
        for key, value in self.expected.config.items():
            if self.config.get(key) != value:
                found.append(f"{key} {self.config.get(key, 'unset')}, declared {value}")
        return found


def _admin(config: KafkaConfig) -> AdminClient:
    # log_level 4: warnings and errors, not the client's info lines about its own shutdown
    return AdminClient(config.librdkafka_config(**{"socket.connection.setup.timeout.ms": 5000, "log_level": 4}))


def _metadata(admin: AdminClient, config: KafkaConfig, timeout: float) -> Any:
    try:
        return admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise TopicAdminError(
            f"the Kafka cluster at {config.bootstrap_servers} did not answer within {timeout:.0f} s "
            f"({exc.args[0].str()}): is KAFKA_BOOTSTRAP_SERVERS right?"
        ) from None


def create_topics(
    config: KafkaConfig, specs: Sequence[TopicSpec], *, replication_factor: int | None = None, timeout: float = 30.0
) -> CreateResult:
    """Create the topics of ``specs`` that the cluster lacks; existing ones are left as they are (idempotent).

    Replication is ``replication_factor_for`` each spec's own on this cluster.
    Waits until every partition of every spec has a leader (a new topic cannot
    be read before). Raises ``TopicAdminError`` with the cluster's reason.
    """
    admin = _admin(config)
    metadata = _metadata(admin, config, timeout)
    brokers = len(metadata.brokers)
    existing_names = set(metadata.topics)
    planned = [
        s.with_replication(replication_factor_for(s.replication_factor, brokers, replication_factor)) for s in specs
    ]
    missing = [spec for spec in planned if spec.name not in existing_names]
    created: list[str] = []
    if missing:
        new_topics = [
            NewTopic(
                s.name, num_partitions=s.partitions, replication_factor=s.replication_factor, config=dict(s.config)
            )
            for s in missing
        ]
        futures = admin.create_topics(new_topics, operation_timeout=timeout, request_timeout=timeout)
        for name, future in futures.items():
            try:
                future.result(timeout=timeout)
                created.append(name)
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:  # a concurrent creator won: fine
                    raise TopicAdminError(f"could not create topic {name!r}: {error.str()}") from None
    _wait_for_leaders(admin, [s.name for s in specs], timeout)
    return CreateResult(
        created=[s.name for s in planned if s.name in created],
        existing=[s.name for s in planned if s.name not in created],
        replication_factor=planned[0].replication_factor if planned else None,
        brokers=brokers,
    )


def describe_topics(
    config: KafkaConfig, specs: Sequence[TopicSpec], *, replication_factor: int | None = None, timeout: float = 30.0
) -> tuple[list[TopicState], int]:
    """Each of ``specs`` as it is on the cluster, and the cluster's broker count.

    Expected replication is ``replication_factor_for`` the spec's own on this cluster.
    """
    admin = _admin(config)
    metadata = _metadata(admin, config, timeout)
    brokers = len(metadata.brokers)
    topics = metadata.topics
    expected = [
        s.with_replication(replication_factor_for(s.replication_factor, brokers, replication_factor)) for s in specs
    ]
    present = [s for s in expected if s.name in topics and topics[s.name].error is None]
    configs: dict[str, dict[str, str]] = {}
    if present:
        resources = [ConfigResource(ResourceType.TOPIC, s.name) for s in present]
        for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
            try:
                entries = future.result(timeout=timeout)
            except KafkaException as exc:
                raise TopicAdminError(f"could not read the config of {resource.name!r}: {exc.args[0].str()}") from None
            configs[resource.name] = {key: str(entry.value) for key, entry in entries.items()}
    states = []
    for spec in expected:
        if spec.name not in configs:
            states.append(TopicState(spec, exists=False))
            continue
        partitions = topics[spec.name].partitions
        replicas = {len(p.replicas) for p in partitions.values()}
        states.append(
            TopicState(
                spec,
                exists=True,
                partitions=len(partitions),
                replication_factor=min(replicas) if replicas else 0,
                config={key: configs[spec.name][key] for key in spec.config if key in configs[spec.name]},
            )
        )
    return states, brokers


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
