"""Typed errors of the events library.

Every error that concerns one Kafka record keeps what is needed to dead-letter
it exactly as it came in (raw bytes and the reason).
"""

from __future__ import annotations

from pathlib import Path

from chipq_pipelines.errors import ChipqError


class EventsError(ChipqError):
    """Base of every error raised by ``chipq_pipelines.events`` (a ``ChipqError``)."""


class ConfigError(EventsError, ValueError):
    """A Kafka setting is missing or invalid; the message names the variable."""

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"{variable}: {reason}")
        self.variable = variable
        self.reason = reason


class EventValidationError(EventsError, ValueError):
    """An event does not match its schema or a business rule; names the field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"invalid event field {field!r}: {reason}")
        self.field = field
        self.reason = reason


class SerializationError(EventsError):
    """An event could not be encoded (or its schema could not be registered)."""


class DeserializationError(EventsError):
    """Bytes could not be decoded into an event. Keeps the raw bytes and the reason."""

    def __init__(self, reason: str, raw: bytes | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


class SchemaNotFoundError(DeserializationError):
    """The writer schema (fingerprint or registry id) of a record is unknown."""


class SchemaRegistryUnavailableError(EventsError):
    """The schema registry could not answer (unreachable, failing, or not configured): retry later.

    Unlike ``SchemaNotFoundError`` the record is not at fault, so it must be neither
    dead-lettered nor rejected: ingest fails the run (the next run retries) and
    consumers wait and decode it again.
    """

    def __init__(self, reason: str, raw: bytes | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


class PublishError(EventsError):
    """An event was not acknowledged by Kafka (or the producer is not running)."""

    def __init__(self, message: str, failures: list[tuple[int, str]] | None = None) -> None:
        super().__init__(message)
        #: (index in the batch, reason) of every event that was not delivered.
        self.failures = failures or []


class TopicNotFoundError(PublishError):
    """The topic does not exist on the cluster (brokers here do not create topics on first use)."""

    def __init__(self, topic: str, bootstrap_servers: str) -> None:
        super().__init__(
            f"topic {topic!r} does not exist on the Kafka cluster at {bootstrap_servers}: nothing was sent. "
            f"Create the platform's topics with `chipq topics create` (declared in topics.yaml; "
            f"`chipq kafka up` does it for a local broker), or create {topic!r} yourself."
        )
        self.topic = topic
        self.bootstrap_servers = bootstrap_servers


class TopicsFileError(EventsError, ValueError):
    """A topics file (``topics.yaml``) cannot be read or declares something invalid; names the file and entry."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"topics file {path}: {reason}")
        self.path = path
        self.reason = reason


class TopicAdminError(EventsError):
    """The cluster refused to create or describe topics (too few brokers, no permission, unreachable)."""


class NotStartedError(EventsError, RuntimeError):
    """A producer or consumer was used before ``start()`` or after ``stop()``."""


class ConsumerError(EventsError):
    """A fatal Kafka error while consuming (not a per-record problem)."""
