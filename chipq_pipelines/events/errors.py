"""Typed errors of the events library.

Every error that concerns one Kafka record keeps what is needed to dead-letter
it exactly as it came in (raw bytes and the reason).
"""

from __future__ import annotations

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


class PublishError(EventsError):
    """An event was not acknowledged by Kafka (or the producer is not running)."""

    def __init__(self, message: str, failures: list[tuple[int, str]] | None = None) -> None:
        super().__init__(message)
        #: (index in the batch, reason) of every event that was not delivered.
        self.failures = failures or []


class NotStartedError(EventsError, RuntimeError):
    """A producer or consumer was used before ``start()`` or after ``stop()``."""


class ConsumerError(EventsError):
    """A fatal Kafka error while consuming (not a per-record problem)."""
