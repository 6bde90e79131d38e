"""The event processor's health over HTTP, for Kubernetes probes: ``/livez`` and ``/readyz`` as JSON.

``chipq processor --health-port P`` serves them (``serve_with_health``):

* ``/livez``: the processor's event loop answers within ``loop_timeout_s`` and the service has
  not stopped. A wedged loop (a blocking call, a deadlock) fails it, and the kubelet restarts the
  pod. Kafka is deliberately not part of liveness: restarting pods does not bring a broker back.
* ``/readyz``: alive, both consumers started, and the guide's ``KafkaClientManager.health_check()``
  sees a broker answer a metadata request. A processor that cannot reach Kafka is reported not
  ready (a rollout waits for it) but keeps running and reconnects by itself.

Both answer 200 when healthy and 503 otherwise, with the facts in a JSON body. Counters and lag
are metrics, not health: they stay out of these answers. The server runs in a thread of its own
and asks the event loop for every answer, so it never touches a consumer from another thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from chipq_pipelines.events.health import KafkaClientManager

if TYPE_CHECKING:
    from chipq_pipelines.events.processor import EventProcessorService

logger = logging.getLogger("chipq.events.health_endpoint")

LIVENESS_PATH = "/livez"
READINESS_PATH = "/readyz"


async def processor_health(service: EventProcessorService, *, readiness: bool) -> dict[str, Any]:
    """The processor's health as a JSON-able dict; ``healthy`` says whether the probe passes."""
    consumers = {
        "analytics": service.analytics_consumer,
        "notifications": service.notification_consumer,
    }
    report: dict[str, Any] = {
        "check": "readiness" if readiness else "liveness",
        "running": service.is_running,
        "consumers": {
            name: {"group": consumer.group_id, "topics": consumer.topics, "started": consumer.consumer is not None}
            for name, consumer in consumers.items()
        },
    }
    healthy = service.is_running
    if readiness:
        report["kafka"] = await KafkaClientManager(service.config).health_check(timeout=2.0)
        healthy = healthy and report["kafka"] and all(c["started"] for c in report["consumers"].values())
    report["healthy"] = healthy
    return report


class ProcessorHealthServer:
    """Serves ``/livez`` and ``/readyz`` of ``service``, whose event loop is ``loop``, on ``host:port``."""

    def __init__(
        self,
        service: EventProcessorService,
        loop: asyncio.AbstractEventLoop,
        port: int,
        host: str = "0.0.0.0",  # the kubelet probes the pod's IP
        loop_timeout_s: float = 5.0,
    ) -> None:
        self.service = service
        self.loop = loop
        self.loop_timeout_s = loop_timeout_s
        self._http = ThreadingHTTPServer((host, port), _handler_for(self))
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, name="chipq-health", daemon=True)

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    def start(self) -> None:
        self._thread.start()
        logger.info("health endpoint on port %d (%s, %s)", self.port, LIVENESS_PATH, READINESS_PATH)

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)

    def answer(self, path: str) -> tuple[HTTPStatus, dict[str, Any]]:
        """Status and body for ``path`` (called from the server's threads)."""
        if path not in (LIVENESS_PATH, READINESS_PATH):
            return HTTPStatus.NOT_FOUND, {"error": f"no such path; try {LIVENESS_PATH} or {READINESS_PATH}"}
        readiness = path == READINESS_PATH
        future = asyncio.run_coroutine_threadsafe(processor_health(self.service, readiness=readiness), self.loop)
        # readiness waits for the Kafka check too (at most ~4 s), on top of the loop's own answer
        timeout = self.loop_timeout_s + (5.0 if readiness else 0.0)
        try:
            report = future.result(timeout=timeout)
        except TimeoutError:
            future.cancel()
            report = {
                "check": "readiness" if readiness else "liveness",
                "healthy": False,
                "error": f"the processor's event loop did not answer within {timeout:g} s",
            }
        except RuntimeError as exc:  # the loop is closed: the processor is gone
            report = {"healthy": False, "error": str(exc)}
        return (HTTPStatus.OK if report["healthy"] else HTTPStatus.SERVICE_UNAVAILABLE), report


def _handler_for(server: ProcessorHealthServer) -> type[BaseHTTPRequestHandler]:
    class HealthHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, report = server.answer(self.path.split("?", 1)[0])
            body = json.dumps(report, sort_keys=True).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: not worth a log line
            pass

    return HealthHandler


@contextmanager
def health_endpoint(
    service: EventProcessorService, port: int, host: str = "0.0.0.0"
) -> Iterator[ProcessorHealthServer]:
    """Serve ``service``'s health while the block runs (call it from inside the service's event loop)."""
    server = ProcessorHealthServer(service, asyncio.get_running_loop(), port, host)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def serve_with_health(
    service: EventProcessorService, port: int, host: str = "0.0.0.0", **serve_options: Any
) -> None:
    """``processor.serve(service, **serve_options)`` with ``/livez`` and ``/readyz`` served on ``port`` meanwhile."""
    from chipq_pipelines.events.processor import serve

    with health_endpoint(service, port, host):
        await serve(service, **serve_options)
