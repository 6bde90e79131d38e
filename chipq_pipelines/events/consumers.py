"""The platform's consumers: running per-lot analytics and threshold-violation notifications."""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chipq_pipelines.events.base_consumer import AsyncConsumerHandle, BaseEventConsumer, ConsumedRecord, Handler
from chipq_pipelines.events.builders import ALERT_EVENT_TYPES
from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.notified import RETENTION_MS, NotifiedLog
from chipq_pipelines.events.notifiers import Notifier, notifier_from_env
from chipq_pipelines.events.schemas import INSPECTION, QUALITY, load_schema
from chipq_pipelines.events.topics import INSPECTION_TOPIC, QUALITY_TOPIC

__all__ = [
    "AnalyticsConsumer",
    "AsyncConsumerHandle",
    "BaseEventConsumer",
    "ConsumedRecord",
    "Handler",
    "LotStatistics",
    "NotificationConsumer",
]

ANALYTICS_GROUP = "chipq-analytics"
NOTIFICATIONS_GROUP = "chipq-notifications"


class _SeenIds:
    """The last ``capacity`` event ids (redelivered events are recognised, memory stays bounded)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._capacity = capacity

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> None:
        self._ids[event_id] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)


@dataclass
class LotStatistics:
    """Running statistics of one lot (batch_id)."""

    lot_id: str
    inspections_created: int = 0
    inspections_completed: int = 0
    quality_score_count: int = 0
    quality_score_sum: float = 0.0
    defect_count: int = 0
    defects_by_type: collections.Counter[str] = field(default_factory=collections.Counter)
    defects_by_severity: collections.Counter[str] = field(default_factory=collections.Counter)
    quality_assessed: int = 0
    quality_passed: int = 0
    threshold_violations: int = 0
    threshold_clearances: int = 0
    last_event_time: datetime | None = None

    @property
    def mean_quality_score(self) -> float | None:
        return self.quality_score_sum / self.quality_score_count if self.quality_score_count else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "lot_id": self.lot_id,
            "inspections_created": self.inspections_created,
            "inspections_completed": self.inspections_completed,
            "mean_quality_score": self.mean_quality_score,
            "defect_count": self.defect_count,
            "defects_by_type": dict(self.defects_by_type),
            "defects_by_severity": dict(self.defects_by_severity),
            "quality_assessed": self.quality_assessed,
            "quality_passed": self.quality_passed,
            "threshold_violations": self.threshold_violations,
            "threshold_clearances": self.threshold_clearances,
            "last_event_time": self.last_event_time,
        }


class AnalyticsConsumer(BaseEventConsumer):
    """Reads both event topics from the beginning and keeps per-lot statistics."""

    def __init__(self, config: KafkaConfig | None = None, group_id: str = ANALYTICS_GROUP, **options: Any) -> None:
        super().__init__(
            topics=[INSPECTION_TOPIC, QUALITY_TOPIC],
            group_id=group_id,
            schema=load_schema(INSPECTION),
            config=config,
            readers=[load_schema(QUALITY)],
            **options,
        )
        self.lots: dict[str, LotStatistics] = {}
        self._seen = _SeenIds()
        self.duplicates_skipped = 0

    async def process_event(self, event_data: dict[str, Any], record: ConsumedRecord) -> None:
        """Fold one event into its lot's statistics (redelivered events are counted once)."""
        event_id = event_data["event_id"]
        if event_id in self._seen:
            self.duplicates_skipped += 1
            return
        lot_id = event_data.get("batch_id")
        if lot_id is not None:
            self._update(self.lots.setdefault(lot_id, LotStatistics(lot_id)), event_data)
        self._seen.add(event_id)

    @staticmethod
    def _update(lot: LotStatistics, event: dict[str, Any]) -> None:
        event_type = event["event_type"]
        if event_type == "INSPECTION_CREATED":
            lot.inspections_created += 1
        elif event_type == "INSPECTION_COMPLETED":
            lot.inspections_completed += 1
            if event.get("quality_score") is not None:
                lot.quality_score_count += 1
                lot.quality_score_sum += event["quality_score"]
            for defect in event.get("defects") or []:
                lot.defect_count += 1
                lot.defects_by_type[defect["defect_type"]] += 1
                lot.defects_by_severity[defect["severity"]] += 1
        elif event_type == "QUALITY_ASSESSED":
            lot.quality_assessed += 1
            lot.quality_passed += bool(event.get("pass_fail"))
        elif event_type == "THRESHOLD_VIOLATED":
            lot.threshold_violations += 1
        elif event_type == "THRESHOLD_CLEARED":
            lot.threshold_clearances += 1
        event_time = event.get("event_time")
        if isinstance(event_time, datetime) and (lot.last_event_time is None or event_time > lot.last_event_time):
            lot.last_event_time = event_time

    def lot_statistics(self, lot_id: str) -> dict[str, Any] | None:
        """The running statistics of one lot, or None if no event of it was seen."""
        lot = self.lots.get(lot_id)
        return lot.to_dict() if lot else None

    def statistics(self) -> dict[str, dict[str, Any]]:
        """Running statistics of every lot seen so far."""
        return {lot_id: lot.to_dict() for lot_id, lot in self.lots.items()}


class NotificationConsumer(BaseEventConsumer):
    """Hands each THRESHOLD_VIOLATED and THRESHOLD_CLEARED event to a notifier, once per event_id.

    Once across restarts and across the replicas of one group: the notified ids are
    kept in the compacted topic ``<group_id>.notified`` (``events.notified``), loaded
    at ``start()``, read again before each decision and written after each notification,
    before the record's offset is committed. What stays at least once (a crash between
    notifying and writing the id) reaches the notifier with the same ``event_id``.
    """

    def __init__(
        self,
        config: KafkaConfig | None = None,
        notifier: Notifier | None = None,
        group_id: str = NOTIFICATIONS_GROUP,
        *,
        notified_retention_ms: int = RETENTION_MS,
        **options: Any,
    ) -> None:
        super().__init__(
            topics=[QUALITY_TOPIC], group_id=group_id, schema=load_schema(QUALITY), config=config, **options
        )
        self.notifier = notifier or notifier_from_env()
        self.notified = NotifiedLog(self.config, group_id, retention_ms=notified_retention_ms)
        self._seen = _SeenIds()
        self._started_log = False
        self.notifications_sent = 0
        self.duplicates_skipped = 0

    async def start(self) -> None:
        """Load the ids this group notified (creating ``<group>.notified`` if missing), then join the group."""
        if not self._started_log:
            await asyncio.to_thread(self.notified.start)
            self._started_log = True
        await super().start()

    async def stop(self, timeout: float = 30.0) -> None:
        await super().stop(timeout)
        if self._started_log:
            await asyncio.to_thread(self.notified.stop)
            self._started_log = False

    async def process_event(self, event_data: dict[str, Any], record: ConsumedRecord) -> None:
        """Notify about a threshold alert unless this group already notified its event_id."""
        if event_data["event_type"] not in ALERT_EVENT_TYPES:
            return
        event_id = event_data["event_id"]
        if self._started_log:
            self.notified.refresh()  # what the group's other replicas notified meanwhile
        if event_id in self.notified:
            self.duplicates_skipped += 1
            return
        if event_id not in self._seen:  # seen but not recorded: an earlier write failed, retry only the write
            await self.notifier.notify(event_data)  # a failure is retried, then dead-lettered
            self._seen.add(event_id)
            self.notifications_sent += 1
        elif not self._started_log:
            self.duplicates_skipped += 1
            return
        if self._started_log:
            await asyncio.to_thread(self.notified.record, event_id)

    def get_metrics(self) -> dict[str, Any]:
        metrics = super().get_metrics()
        metrics.update(notifications_sent=self.notifications_sent, duplicates_skipped=self.duplicates_skipped)
        return metrics
