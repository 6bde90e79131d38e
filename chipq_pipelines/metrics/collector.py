"""``PipelineCollector``: the pipeline's health as Prometheus metrics, read at scrape time.

Kafka (watermarks, the pipeline group's committed offsets, the dead-letter topics)
and the analysts' view are read when Prometheus scrapes, at most once per
``cache_seconds`` (several Prometheus servers scraping one endpoint cost one read).
A source that cannot be read makes ``chipq_metrics_source_up{source}`` 0 and
leaves its series out of that scrape instead of failing it; ages are computed at
each scrape, so they keep growing while a cached reading is served.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from chipq_pipelines.metrics.readings import KafkaReader, KafkaReading, PipelineTargets, SnapshotReading, read_snapshot

logger = logging.getLogger("chipq.metrics")

#: How long one reading of a source is served again (Prometheus scrapes every 15 s by default).
DEFAULT_CACHE_SECONDS = 1.0


@dataclass
class _Cached:
    value: Any = None
    ok: bool = False
    read_at: float = float("-inf")
    seconds: float = 0.0


class PipelineCollector(Collector):
    """Collects ``chipq_pipeline_*``, ``chipq_snapshot_*``, ``chipq_events_*``, ``chipq_alerts_*``,
    ``chipq_offset_gap_records`` and ``chipq_dlq_records`` (docs/monitoring.md lists them)."""

    def __init__(
        self, targets: PipelineTargets, kafka: KafkaReader, *, cache_seconds: float = DEFAULT_CACHE_SECONDS
    ) -> None:
        self.targets = targets
        self._kafka = kafka
        self._cache_seconds = cache_seconds
        self._cached: dict[str, _Cached] = {"kafka": _Cached(), "snapshot": _Cached()}
        self._lock = threading.Lock()

    def _read(self, source: str, read: Callable[[], Any]) -> _Cached:
        with self._lock:  # concurrent scrapes share one reading
            cached = self._cached[source]
            if time.monotonic() - cached.read_at < self._cache_seconds:
                return cached
            started = time.monotonic()
            try:
                fresh = _Cached(read(), True, started)
            except Exception as exc:
                # Once per outage, not once per scrape; the source_up gauge tells the rest.
                log = logger.warning if cached.ok or cached.read_at == float("-inf") else logger.debug
                log("could not read %s for the metrics: %s", source, exc)
                fresh = _Cached(None, False, started)
            if fresh.ok and not cached.ok and cached.read_at != float("-inf"):
                logger.warning("reading %s for the metrics again", source)
            fresh.seconds = time.monotonic() - started
            self._cached[source] = fresh
            return fresh

    def collect(self) -> Iterator[Metric]:
        kafka = self._read("kafka", lambda: self._kafka.read(self.targets.topics))
        snapshot = self._read("snapshot", lambda: read_snapshot(self.targets))
        up = GaugeMetricFamily(
            "chipq_metrics_source_up",
            "1 when the source was read for this scrape (kafka; snapshot: 0 also while there is no analysts' view).",
            labels=["source"],
        )
        took = GaugeMetricFamily(
            "chipq_metrics_read_seconds", "How long the last read of the source took.", labels=["source"]
        )
        for source, cached in (("kafka", kafka), ("snapshot", snapshot)):
            up.add_metric([source], 1 if cached.ok and cached.value is not None else 0)
            took.add_metric([source], cached.seconds)
        yield up
        yield took
        if kafka.ok:
            yield from self._kafka_families(kafka.value)
        if snapshot.ok and snapshot.value is not None:
            yield from self._snapshot_families(snapshot.value, kafka.value if kafka.ok else None)

    def _kafka_families(self, reading: KafkaReading) -> Iterator[Metric]:
        labels = ["topic", "partition"]
        lag = GaugeMetricFamily(
            "chipq_pipeline_lag_records",
            f"Records on the topic that the pipeline group ({self.targets.group}) has not consumed: high watermark "
            "minus its committed offset (the low watermark when it never committed).",
            labels=labels,
        )
        high = GaugeMetricFamily(
            "chipq_kafka_high_watermark", "Offset of the next record written to the partition.", labels=labels
        )
        low = GaugeMetricFamily("chipq_kafka_low_watermark", "Oldest offset Kafka still holds.", labels=labels)
        committed = GaugeMetricFamily(
            "chipq_pipeline_committed_offset",
            f"Offset committed by the pipeline group ({self.targets.group}); absent when it never committed.",
            labels=labels,
        )
        for p in reading.partitions:
            key = [p.topic, str(p.partition)]
            lag.add_metric(key, p.lag)
            high.add_metric(key, p.high)
            low.add_metric(key, p.low)
            if p.committed is not None:
                committed.add_metric(key, p.committed)
        dlq = GaugeMetricFamily(
            "chipq_dlq_records",
            "Records held in the topic's dead-letter topic <topic>.dlq (high minus low watermark).",
            labels=["topic"],
        )
        for topic, records in reading.dlq_records.items():
            dlq.add_metric([topic], records)
        missing = GaugeMetricFamily(
            "chipq_topic_missing",
            "1 for an event topic of the pipeline that the cluster does not have.",
            labels=["topic"],
        )
        for topic in self.targets.topics:
            missing.add_metric([topic], 1 if topic in reading.missing_topics else 0)
        yield from (lag, high, low, committed, dlq, missing)

    def _snapshot_families(self, reading: SnapshotReading, kafka: KafkaReading | None) -> Iterator[Metric]:
        published = reading.published_at.timestamp()
        yield GaugeMetricFamily(
            "chipq_snapshot_published_timestamp_seconds",
            "When the analysts' view was last published (Unix time).",
            value=published,
        )
        yield GaugeMetricFamily(
            "chipq_snapshot_age_seconds",
            "Seconds since the analysts' view was last published.",
            value=max(0.0, time.time() - published),
        )
        landed = CounterMetricFamily(
            "chipq_events_landed",
            "Events landed in the warehouse (raw tables, as of the analysts' view).",
            labels=["topic"],
        )
        rejected = CounterMetricFamily(
            "chipq_events_rejected",
            "Records rejected into ops.rejected_events (as of the analysts' view).",
            labels=["topic"],
        )
        gaps = GaugeMetricFamily(
            "chipq_offset_gap_records",
            "Records deleted from Kafka before they landed that no operator acknowledged (ops.offset_gaps; "
            "chipq gaps ack).",
            labels=["topic"],
        )
        for topic in self.targets.topics:
            landed.add_metric([topic], reading.landed.get(topic, 0))
            rejected.add_metric([topic], reading.rejected.get(topic, 0))
            gaps.add_metric([topic], reading.gap_records.get(topic, 0))
        yield from (landed, rejected, gaps)
        alerts = CounterMetricFamily(
            "chipq_alerts_published",
            "THRESHOLD_VIOLATED events acknowledged by Kafka, by alert level (as of the analysts' view).",
            labels=["level"],
        )
        cleared = CounterMetricFamily(
            "chipq_alert_clearances_published", "THRESHOLD_CLEARED events acknowledged by Kafka.", labels=["level"]
        )
        waiting = GaugeMetricFamily(
            "chipq_alerts_unpublished",
            "Alert events in ops.alert_outbox not yet acknowledged by Kafka.",
            labels=["level"],
        )
        levels = sorted({a.level for a in reading.alerts} | {"WARNING", "CRITICAL"})
        for level in levels:
            mine = [a for a in reading.alerts if a.level == level]
            alerts.add_metric([level], sum(a.published for a in mine if a.event_type == "THRESHOLD_VIOLATED"))
            cleared.add_metric([level], sum(a.published for a in mine if a.event_type == "THRESHOLD_CLEARED"))
            waiting.add_metric([level], sum(a.unpublished for a in mine))
        yield from (alerts, cleared, waiting)
        behind = GaugeMetricFamily(
            "chipq_snapshot_lag_records",
            "Records on the topic that the analysts' view does not hold yet: high watermark minus the view's "
            "landed offset.",
            labels=["topic", "partition"],
        )
        for p in kafka.partitions if kafka is not None else []:
            landed_offset = reading.landed_offsets.get((p.topic, p.partition), p.low)
            behind.add_metric([p.topic, str(p.partition)], max(p.high - max(landed_offset, p.low), 0))
        yield behind
