"""The event processor: the guide's EventProcessorService (analytics + notifications).

``run_processor(config)`` runs it until SIGTERM or SIGINT, then stops both
consumers cleanly (their handled records committed, the group left). With a
``metrics_port`` it also serves both consumers' counters and lag to Prometheus
(``chipq_pipelines.events.prometheus``, imported only then).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.consumers import AnalyticsConsumer, NotificationConsumer
from chipq_pipelines.events.notifiers import Notifier

logger = logging.getLogger("chipq.events.processor")


class EventProcessorService:
    """Runs AnalyticsConsumer and NotificationConsumer side by side."""

    def __init__(self, config: KafkaConfig | None = None, notifier: Notifier | None = None) -> None:
        self.config = config or KafkaConfig.from_env()
        self.analytics_consumer = AnalyticsConsumer(self.config)
        self.notification_consumer = NotificationConsumer(self.config, notifier=notifier)
        self.is_running = False

    async def start(self) -> None:
        """Start both consumers and run them until ``stop()``."""
        self.is_running = True
        await self.analytics_consumer.start()
        await self.notification_consumer.start()
        await asyncio.gather(self._run_analytics(), self._run_notifications())

    async def _run_analytics(self) -> None:
        while self.is_running:
            try:
                await self.analytics_consumer.consume_with_retry(
                    handler=self.analytics_consumer.process_event, max_retries=3
                )
            except Exception:
                logger.exception("analytics consumer error; retrying in 5 s")
                await asyncio.sleep(5)

    async def _run_notifications(self) -> None:
        while self.is_running:
            try:
                await self.notification_consumer.consume_with_retry(
                    handler=self.notification_consumer.process_event, max_retries=3
                )
            except Exception:
                logger.exception("notification consumer error; retrying in 5 s")
                await asyncio.sleep(5)

    def get_metrics(self) -> dict[str, dict[str, Any]]:
        """Each consumer's ``get_metrics()``, by consumer group id."""
        return {
            self.analytics_consumer.group_id: self.analytics_consumer.get_metrics(),
            self.notification_consumer.group_id: self.notification_consumer.get_metrics(),
        }

    async def stop(self) -> None:
        """Stop both consumers (each finishes its record, commits and leaves the group)."""
        self.is_running = False
        await self.analytics_consumer.stop()
        await self.notification_consumer.stop()


#: Longest a scrape waits for the event loop to read the consumers' metrics.
METRICS_READ_TIMEOUT_S = 5.0


async def serve(
    service: EventProcessorService,
    stop_signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
    *,
    metrics_port: int | None = None,
    metrics_addr: str = "127.0.0.1",
) -> None:
    """Run ``service`` until one of ``stop_signals`` arrives, then stop it.

    With ``metrics_port``, ``http://metrics_addr:metrics_port/metrics`` serves the
    consumers' metrics while the service runs.
    """
    loop = asyncio.get_running_loop()
    metrics_server = None
    if metrics_port is not None:
        from chipq_pipelines.events.prometheus import ConsumerCollector, serve_metrics

        async def read() -> dict[str, dict[str, Any]]:
            return service.get_metrics()

        def read_from_scrape_thread() -> dict[str, dict[str, Any]]:
            # The consumers belong to the event loop: read them there, not from the HTTP server's thread.
            return asyncio.run_coroutine_threadsafe(read(), loop).result(METRICS_READ_TIMEOUT_S)

        metrics_server = serve_metrics(ConsumerCollector(read_from_scrape_thread), metrics_port, metrics_addr)
        logger.info("serving Prometheus metrics on http://%s:%d/metrics", metrics_addr, metrics_server.port)
    stop_requested = asyncio.Event()
    for sig in stop_signals:
        loop.add_signal_handler(sig, stop_requested.set)
    runner = asyncio.create_task(service.start())
    waiter = asyncio.create_task(stop_requested.wait())
    try:
        await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
        logger.info("event processor stopping")
        await service.stop()
        await runner  # the consume loops end once the consumers stopped
    finally:
        waiter.cancel()
        for sig in stop_signals:
            loop.remove_signal_handler(sig)
        if metrics_server is not None:
            await asyncio.to_thread(metrics_server.close)


def run_processor(
    config: KafkaConfig | None = None,
    notifier: Notifier | None = None,
    *,
    health_port: int | None = None,
    metrics_port: int | None = None,
    metrics_addr: str = "127.0.0.1",
) -> None:
    """Blocking entry point of ``chipq processor``: run until SIGTERM/SIGINT, stop cleanly.

    With ``health_port``, ``/livez`` and ``/readyz`` are served there meanwhile (``health_endpoint``);
    with ``metrics_port``, the consumers' metrics to Prometheus.
    """
    service = EventProcessorService(config, notifier)
    options: dict[str, Any] = {"metrics_port": metrics_port, "metrics_addr": metrics_addr}
    if health_port is None:
        asyncio.run(serve(service, **options))
    else:
        from chipq_pipelines.events.health_endpoint import serve_with_health

        asyncio.run(serve_with_health(service, health_port, **options))
