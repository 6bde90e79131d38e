"""Where NotificationConsumer sends threshold violations: a log line, a webhook, or a JSONL file.

``notifier_from_env()`` picks one: ``CHIPQ_ALERT_WEBHOOK_URL`` (HTTP POST of
the event as JSON), else ``CHIPQ_ALERT_JSONL`` (one JSON line per alert),
else a WARNING log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from chipq_pipelines.events.context import log_event

logger = logging.getLogger("chipq.events.alerts")


def event_json(event: dict[str, Any]) -> str:
    """The event as one JSON line (datetimes in ISO 8601)."""

    def default(value: Any) -> str:
        if isinstance(value, datetime):
            return value.isoformat()
        return str(value)

    return json.dumps(event, default=default, sort_keys=True)


class Notifier(Protocol):
    async def notify(self, event: dict[str, Any]) -> None: ...


class LogNotifier:
    """One structured WARNING line per alert."""

    async def notify(self, event: dict[str, Any]) -> None:
        log_event(
            logger,
            logging.WARNING,
            "threshold violated",
            alert_level=event.get("alert_level"),
            scope=event.get("scope"),
            rule=event.get("rule"),
            batch_id=event.get("batch_id"),
            inspection_id=event.get("inspection_id"),
            event_date=event.get("event_date"),
            observed_value=event.get("observed_value"),
            threshold=event.get("threshold"),
            event_id=event.get("event_id"),
            correlation_id=event.get("correlation_id"),
        )


class JsonlNotifier:
    """Appends each alert as a JSON line to ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    async def notify(self, event: dict[str, Any]) -> None:
        line = event_json(event) + "\n"

        def append() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as out:
                out.write(line)

        await asyncio.to_thread(append)


class WebhookNotifier:
    """POSTs each alert as JSON to ``url``; a non-2xx answer is a failure (retried, then dead-lettered)."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url
        self.timeout_s = timeout_s

    async def notify(self, event: dict[str, Any]) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            response = await client.post(
                self.url, content=event_json(event), headers={"content-type": "application/json"}
            )
            response.raise_for_status()


def notifier_from_env() -> Notifier:
    if url := os.environ.get("CHIPQ_ALERT_WEBHOOK_URL", "").strip():
        return WebhookNotifier(url)
    if path := os.environ.get("CHIPQ_ALERT_JSONL", "").strip():
        return JsonlNotifier(path)
    return LogNotifier()
