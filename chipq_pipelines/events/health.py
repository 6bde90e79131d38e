"""Kafka connectivity check that answers within seconds, also when nothing listens."""

from __future__ import annotations

import asyncio
import logging

from confluent_kafka.admin import AdminClient

from chipq_pipelines.events.config import KafkaConfig

logger = logging.getLogger("chipq.events.health")


class KafkaClientManager:
    """Creates admin clients lazily; ``await health_check()`` tells whether Kafka answers."""

    def __init__(self, config: KafkaConfig | None = None) -> None:
        self.config = config or KafkaConfig.from_env()

    def admin(self) -> AdminClient:
        """A fresh AdminClient for this config (librdkafka logs go to the ``chipq.events.health`` logger)."""
        return AdminClient(
            self.config.librdkafka_config(
                **{"socket.connection.setup.timeout.ms": 1000, "reconnect.backoff.max.ms": 500, "logger": logger}
            )
        )

    async def health_check(self, timeout: float = 3.0) -> bool:
        """True when a broker answers a metadata request within ``timeout`` seconds."""

        def probe() -> bool:
            try:
                metadata = self.admin().list_topics(timeout=timeout)
            except Exception as exc:
                logger.info("Kafka health check failed: %s", exc)
                return False
            return bool(metadata.brokers)

        try:
            return await asyncio.wait_for(asyncio.to_thread(probe), timeout + 2.0)
        except TimeoutError:
            return False
