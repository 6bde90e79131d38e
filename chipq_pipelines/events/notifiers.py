"""Where NotificationConsumer sends threshold alerts (violated and cleared): a log line, a webhook, or a JSONL file.

``notifier_from_env()`` picks one: ``CHIPQ_ALERT_WEBHOOK_URL`` (HTTP POST of
the event as JSON), else ``CHIPQ_ALERT_JSONL`` (one JSON line per alert),
else a WARNING log line.

A webhook URL is a secret (Slack and Teams put the credential in its path or
query): only its scheme and host ever reach an exception text, a log line or
a dead-letter header.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from pydantic import SecretStr

from chipq_pipelines.events.context import log_event, redact_urls
from chipq_pipelines.events.errors import EventsError

logger = logging.getLogger("chipq.events.alerts")


def event_json(event: dict[str, Any]) -> str:
    """The event as one JSON line (datetimes in ISO 8601)."""

    def default(value: Any) -> str:
        if isinstance(value, datetime):
            return value.isoformat()
        return str(value)

    return json.dumps(event, default=default, sort_keys=True)


def url_origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: what may be shown of a secret URL (no path, query or user info)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    return f"{parts.scheme or '?'}://{host}{port}"


class _RedactUrls(logging.Filter):
    """Cuts URLs to ``scheme://host`` in the records of a library logger (httpx logs every request's URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_urls(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_REDACT_URLS = _RedactUrls()


class NotificationError(EventsError):
    """A notifier could not deliver an alert; the text never holds a secret (retried, then dead-lettered)."""


class Notifier(Protocol):
    async def notify(self, event: dict[str, Any]) -> None: ...


class LogNotifier:
    """One structured WARNING line per alert."""

    async def notify(self, event: dict[str, Any]) -> None:
        log_event(
            logger,
            logging.WARNING if event.get("event_type") != "THRESHOLD_CLEARED" else logging.INFO,
            "threshold cleared" if event.get("event_type") == "THRESHOLD_CLEARED" else "threshold violated",
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
    """POSTs each alert as JSON to ``url``; a non-2xx answer is a failure (retried, then dead-lettered).

    The URL is kept as a ``SecretStr``; errors name only its ``scheme://host``
    (httpx's own texts hold the whole URL, so they are replaced, not chained).
    The event id goes along in the ``Idempotency-Key`` header (and in the body):
    a receiver can drop the rare second delivery (see NotificationConsumer).
    """

    def __init__(self, url: str | SecretStr, timeout_s: float = 5.0) -> None:
        self._url = url if isinstance(url, SecretStr) else SecretStr(url)
        self.origin = url_origin(self._url.get_secret_value())
        self.timeout_s = timeout_s
        for name in ("httpx", "httpcore"):  # their INFO/DEBUG lines hold the whole URL
            library_logger = logging.getLogger(name)
            if _REDACT_URLS not in library_logger.filters:
                library_logger.addFilter(_REDACT_URLS)

    def __repr__(self) -> str:
        return f"WebhookNotifier({self.origin})"

    async def notify(self, event: dict[str, Any]) -> None:
        import httpx

        headers = {"content-type": "application/json", "idempotency-key": str(event.get("event_id", ""))}
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                response = await client.post(self._url.get_secret_value(), content=event_json(event), headers=headers)
        except httpx.HTTPError as exc:
            failure = f"webhook {self.origin} unreachable: {type(exc).__name__}"
        else:
            if response.is_success:
                return
            failure = f"webhook {self.origin} answered HTTP {response.status_code}"
        raise NotificationError(failure) from None  # the cause's text holds the URL


def notifier_from_env() -> Notifier:
    if url := os.environ.get("CHIPQ_ALERT_WEBHOOK_URL", "").strip():
        return WebhookNotifier(url)
    if path := os.environ.get("CHIPQ_ALERT_JSONL", "").strip():
        return JsonlNotifier(path)
    return LogNotifier()
