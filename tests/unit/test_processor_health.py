"""The processor's /livez and /readyz (``chipq processor --health-port``), without a broker."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.health_endpoint import health_endpoint
from chipq_pipelines.events.processor import EventProcessorService
from chipq_pipelines.local_kafka import free_port


def _get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _unreachable_kafka() -> EventProcessorService:
    return EventProcessorService(KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}"))


def test_a_running_processor_without_kafka_is_alive_but_not_ready() -> None:
    async def scenario() -> tuple[tuple[int, dict[str, Any]], tuple[int, dict[str, Any]], float]:
        service = _unreachable_kafka()
        service.is_running = True  # as start() sets it; its consumers never got to join a group
        with health_endpoint(service, 0, "127.0.0.1") as server:
            live = await asyncio.to_thread(_get, server.port, "/livez")
            started = time.monotonic()
            ready = await asyncio.to_thread(_get, server.port, "/readyz")
            return live, ready, time.monotonic() - started

    (live_status, live), (ready_status, ready), ready_seconds = asyncio.run(scenario())
    assert live_status == 200 and live["healthy"] and live["running"]
    assert ready_status == 503 and ready["kafka"] is False and not ready["healthy"]
    assert ready["consumers"]["notifications"] == {
        "group": "chipq-notifications",
        "topics": ["chip-quality.quality.events"],
        "started": False,
    }
    assert ready_seconds < 6, "a probe must answer within the kubelet's timeout"


def test_a_stopped_processor_is_not_alive() -> None:
    async def scenario() -> tuple[int, dict[str, Any]]:
        with health_endpoint(_unreachable_kafka(), 0, "127.0.0.1") as server:
            return await asyncio.to_thread(_get, server.port, "/livez")

    status, body = asyncio.run(scenario())
    assert status == 503 and body == {**body, "running": False, "healthy": False}


def test_a_wedged_event_loop_fails_liveness() -> None:
    """A blocking call on the loop (the consumers' loop too) is what liveness exists to catch."""

    async def scenario() -> tuple[int, dict[str, Any]]:
        service = _unreachable_kafka()
        service.is_running = True
        with health_endpoint(service, 0, "127.0.0.1") as server:
            server.loop_timeout_s = 0.5
            probe = asyncio.get_running_loop().run_in_executor(None, _get, server.port, "/livez")
            time.sleep(2)  # wedge the loop: nothing on it runs meanwhile
            return await probe

    status, body = asyncio.run(scenario())
    assert status == 503 and "did not answer within 0.5 s" in body["error"]


def test_unknown_paths_are_404() -> None:
    async def scenario() -> tuple[int, dict[str, Any]]:
        with health_endpoint(_unreachable_kafka(), 0, "127.0.0.1") as server:
            return await asyncio.to_thread(_get, server.port, "/metrics")

    status, body = asyncio.run(scenario())
    assert status == 404 and "/readyz" in body["error"]
