"""Correlation ids and structured log lines.

A correlation id follows a request through services: given explicitly, taken
from the caller's context (``correlation_context``), or new. Producers put it
in the event, in the ``correlation_id`` Kafka header and in their log lines.
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

#: A URL's scheme and host, then what follows (path, query, fragment), and user info before the host.
_URL = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?:[^/\s@'\"]*@)?(?P<host>[^/\s?#'\"]+)[^\s'\"]*")

correlation_id_var: ContextVar[str | None] = ContextVar("chipq_correlation_id", default=None)


def current_correlation_id(explicit: str | None = None) -> str:
    """``explicit`` if given, else the context's id, else a new one."""
    return explicit or correlation_id_var.get() or str(uuid.uuid4())


@contextlib.contextmanager
def correlation_context(correlation_id: str | None = None) -> Iterator[str]:
    """Events published inside this block carry ``correlation_id`` (new when None)."""
    cid = correlation_id or str(uuid.uuid4())
    token = correlation_id_var.set(cid)
    try:
        yield cid
    finally:
        correlation_id_var.reset(token)


def log_event(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """``message key=value …`` (also in ``record.event_fields``), cheap when the level is off."""
    if not logger.isEnabledFor(level):
        return
    text = " ".join(f"{key}={value}" for key, value in fields.items() if value is not None)
    logger.log(level, "%s %s", message, text, extra={"event_fields": fields})


def redact_urls(text: str) -> str:
    """``text`` with every URL cut to ``scheme://host``: webhook URLs carry their secret in the path or query.

    Applied to exception texts before they reach a log line or a dead-letter header, whatever raised them.
    """
    return _URL.sub(lambda m: f"{m['scheme']}{m['host']}", text)
