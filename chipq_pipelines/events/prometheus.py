"""Prometheus exposition of the event consumers' counters and lag (``chipq processor --metrics-port``).

The only module of the events library that imports ``prometheus_client``; nothing
imports it unless a metrics port is asked for. A custom collector reads each
consumer's ``get_metrics()`` at scrape time, so the values are never older than
the scrape and the library keeps no second set of counters.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

#: Consumer group id -> that consumer's ``get_metrics()``.
ConsumerMetrics = Mapping[str, Mapping[str, Any]]

#: ``get_metrics()`` key -> (metric name without ``chipq_consumer_``, help); all are counters.
COUNTERS = {
    "messages_consumed": ("messages_consumed", "Records polled from Kafka by this process."),
    "messages_processed": ("messages_processed", "Records whose handler succeeded."),
    "messages_failed": ("messages_failed", "Records that failed to decode or whose handler failed for good."),
    "messages_retried": ("messages_retried", "Handler retries (each failed attempt that was tried again)."),
    "messages_dead_lettered": ("messages_dead_lettered", "Records sent to <topic>.dlq (acknowledged by Kafka)."),
    "registry_waits": ("registry_waits", "Waits for an unavailable schema registry (the record is decoded again)."),
    "commits": ("commits", "Offset commits sent to the consumer group."),
    "notifications_sent": ("notifications_sent", "Threshold alerts handed to the notifier (NotificationConsumer)."),
    "duplicates_skipped": ("duplicates_skipped", "Alerts not notified again: the group had notified their event id."),
}
_PARTITION_KEY = re.compile(r"^(?P<topic>.+)\[(?P<partition>\d+)\]$")


class ConsumerCollector(Collector):
    """Reads ``read_metrics()`` (group id -> ``get_metrics()``) on every scrape.

    ``chipq_consumer_up`` is 0 when the consumers could not be read (the process is
    stuck or stopping); the other families are then empty for that scrape.
    """

    def __init__(self, read_metrics: Callable[[], ConsumerMetrics]) -> None:
        self._read_metrics = read_metrics

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("chipq_consumer_up", "1 when the consumers' metrics could be read at this scrape.")
        try:
            by_group = self._read_metrics()
        except Exception:  # a scrape must answer; the gauge says the read failed
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for key, (name, help_text) in COUNTERS.items():
            family = CounterMetricFamily(f"chipq_consumer_{name}", help_text, labels=["group"])
            for group, metrics in by_group.items():
                if key in metrics:
                    family.add_metric([group], float(metrics[key]))
            yield family
        buffered = GaugeMetricFamily(
            "chipq_consumer_buffered_records", "Records polled and not yet handled.", labels=["group"]
        )
        lag = GaugeMetricFamily(
            "chipq_consumer_lag_records",
            "High watermark minus the next offset to handle, per assigned partition.",
            labels=["group", "topic", "partition"],
        )
        for group, metrics in by_group.items():
            buffered.add_metric([group], float(metrics.get("buffered", 0)))
            for key, value in (metrics.get("lag") or {}).items():
                match = _PARTITION_KEY.match(key)
                if match:
                    lag.add_metric([group, match["topic"], match["partition"]], float(value))
        yield buffered
        yield lag


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint; ``close()`` stops it."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(collector: Collector, port: int, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve ``collector`` and the process's own metrics (``process_*``: CPU, memory, open files) on
    ``http://addr:port/metrics``. Port 0 picks a free one (``MetricsServer.port`` tells which).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return MetricsServer(server, thread)
