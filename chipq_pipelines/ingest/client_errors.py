"""Telling a refused password from a slow broker.

librdkafka reports client-level trouble (authentication, all brokers down)
through ``error_cb``, not through the call that is waiting: without it a
wrong password looks like a broker that never answers. ``ClientErrors`` is
that callback, and raises the one error that no retry can fix.
"""

from __future__ import annotations

from collections import deque

from confluent_kafka import KafkaError

from chipq_pipelines.errors import ChipqError


class KafkaAuthenticationError(ChipqError, RuntimeError):
    """The cluster refused the credentials (SASL): nothing can be read until they are fixed."""


class ClientErrors:
    """An ``error_cb`` that keeps librdkafka's last client-level errors (served by poll/consume calls)."""

    def __init__(self) -> None:
        self.errors: deque[KafkaError] = deque(maxlen=50)

    def __call__(self, error: KafkaError) -> None:
        self.errors.append(error)

    def raise_if_authentication_failed(self, cause: BaseException | None = None) -> None:
        for error in self.errors:
            if error.code() == KafkaError._AUTHENTICATION:
                # librdkafka's text names the broker and the mechanism, never the password.
                raise KafkaAuthenticationError(
                    f"Kafka authentication failed: {error.str()} (check KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD)"
                ) from cause
