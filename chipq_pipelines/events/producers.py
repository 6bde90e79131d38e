"""Inspection and quality event producers: async (services) and blocking (Dagster ops).

Every publish builds the complete event, validates it (naming the bad field)
before anything is sent, encodes it, waits for Kafka's acknowledgement and
returns where it landed. Each event carries a correlation id in its body, in
the ``correlation_id`` header and in the log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from chipq_pipelines.events import builders
from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.context import log_event
from chipq_pipelines.events.delivery import (
    DeliveryReport,
    OnBatchDone,
    Outcome,
    ProducerCore,
    ensure_topic,
    future_callback,
)
from chipq_pipelines.events.errors import EventValidationError, PublishError
from chipq_pipelines.events.schemas import INSPECTION, QUALITY, load_schema
from chipq_pipelines.events.serialization import AvroSerializer
from chipq_pipelines.events.topics import INSPECTION_TOPIC, QUALITY_TOPIC

logger = logging.getLogger("chipq.events.producer")

R = TypeVar("R")
KeyFn = Callable[[dict[str, Any]], str]
#: An encoded event: (value, key, correlation_id, event_type, event_id); the headers carry the last three.
Prepared = tuple[bytes, str, str, str, str]


class _ProducerBase:
    """Config, serializer and Kafka producer shared by the async and blocking producers."""

    topic: str
    schema_name: str
    _complete: Callable[[Mapping[str, Any]], dict[str, Any]]
    _default_key: Callable[[Mapping[str, Any]], str]

    def __init__(self, config: KafkaConfig | None = None, *, topic: str | None = None, stop_timeout_s: float = 10.0):
        self.config = config or KafkaConfig.from_env()
        if topic is not None:
            self.topic = topic
        self.serializer = AvroSerializer(load_schema(self.schema_name), config=self.config)
        self._core = ProducerCore(self.config)
        writer = self.serializer.schema.schema if self.serializer.schema else {"fields": []}
        self._defaults = [
            (f["name"], f["default"], isinstance(f["default"], list | dict)) for f in writer["fields"] if "default" in f
        ]
        self._stop_timeout_s = stop_timeout_s
        # bound once: every event goes through these
        self._check = self.serializer.check
        self._encode = self.serializer.serialize
        self._key_of = type(self)._default_key

    def get_metrics(self) -> dict[str, Any]:
        """``messages_sent``, ``messages_failed``, ``bytes_sent``, in-flight count, latency percentiles (ms)."""
        return self.metrics_snapshot()

    def metrics_snapshot(self) -> dict[str, Any]:
        return self._core.metrics.snapshot(self._core.in_flight())

    def _prepare(self, event: dict[str, Any], key: str | None = None) -> Prepared:
        """Validate and encode a complete event; nothing is sent when this raises."""
        for name, default, mutable in self._defaults:  # the writer schema's newer optional fields
            if name not in event:
                event[name] = copy.deepcopy(default) if mutable else default
        self._check(event)
        value = self._encode(event, self.topic)
        return (
            value,
            key if key is not None else self._key_of(event),
            event["correlation_id"],
            event["event_type"],
            event["event_id"],
        )

    def _prepare_batch(self, events: Iterable[Mapping[str, Any]], key_fn: KeyFn | None) -> list[Prepared]:
        """Complete, validate and encode every event before any is sent; errors name ``events[i].field``."""
        complete = type(self)._complete
        prepare = self._prepare
        prepared: list[Prepared] = []
        append = prepared.append
        for index, partial in enumerate(events):
            event = complete(partial)
            try:
                append(prepare(event, key_fn(event) if key_fn else None))
            except EventValidationError as exc:
                raise EventValidationError(f"events[{index}].{exc.field}", exc.reason) from None
        return prepared

    def _send_prepared(self, prepared: list[Prepared], on_done: OnBatchDone) -> None:
        """Produce a prepared batch; each message's header list is built just before it is produced."""
        self._core.send_batch(
            self.topic,
            (
                (value, key, [("correlation_id", correlation_id), ("event_type", event_type), ("event_id", event_id)])
                for value, key, correlation_id, event_type, event_id in prepared
            ),
            on_done,
            len(prepared),
        )

    def _log_delivery(self, prepared: Prepared, report: DeliveryReport, level: int = logging.INFO) -> None:
        _, _, correlation_id, event_type, event_id = prepared
        log_event(
            logger,
            level,
            "event published",
            topic=report.topic,
            partition=report.partition,
            offset=report.offset,
            event_type=event_type,
            event_id=event_id,
            correlation_id=correlation_id,
        )


class _AsyncProducer(_ProducerBase):
    async def start(self) -> None:
        """Create the Kafka producer (no network wait; delivery errors surface on publish)."""
        self._core.start()

    async def stop(self) -> int:
        """Flush (bounded by ``stop_timeout_s``); returns how many events were not delivered."""
        return await asyncio.to_thread(self._core.stop, self._stop_timeout_s)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _send(self, prepared: Prepared) -> DeliveryReport:
        value, key, correlation_id, event_type, event_id = prepared
        headers = [("correlation_id", correlation_id), ("event_type", event_type), ("event_id", event_id)]
        await ensure_topic(self._core, self.topic)
        future: asyncio.Future[DeliveryReport] = asyncio.get_running_loop().create_future()
        self._core.send(self.topic, value, key, headers, future_callback(future))
        report = await future
        self._log_delivery(prepared, report)
        return report

    def _publish(self, event: dict[str, Any]) -> Awaitable[DeliveryReport]:
        return self._send(self._prepare(event))

    async def publish_event(self, event: Mapping[str, Any], key: str | None = None) -> DeliveryReport:
        """Publish one (partial) event dict; ids and time are filled like ``publish_batch`` does."""
        return await self._send(self._prepare(type(self)._complete(event), key))

    async def publish_batch(
        self, events: Iterable[Mapping[str, Any]], key_fn: KeyFn | None = None
    ) -> list[DeliveryReport]:
        """Validate all, send all pipelined, wait for all; raises ``PublishError`` listing failures."""
        prepared = self._prepare_batch(events, key_fn)
        if not prepared:
            return []
        await ensure_topic(self._core, self.topic)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Outcome]] = loop.create_future()

        def settle(outcomes: list[Outcome]) -> None:
            if not done.done():
                done.set_result(outcomes)

        def on_done(outcomes: list[Outcome]) -> None:  # on the poll thread
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(settle, outcomes)

        self._send_prepared(prepared, on_done)
        return _batch_reports(prepared, await done, self)


def _batch_reports(
    prepared: list[Prepared], results: Sequence[Outcome], producer: _ProducerBase
) -> list[DeliveryReport]:
    failures = [(i, r) for i, r in enumerate(results) if not isinstance(r, DeliveryReport)]
    if failures:
        raise PublishError(
            f"{len(failures)} of {len(results)} events not delivered; first: {failures[0][1]}",
            [(i, str(r)) for i, r in failures],
        )
    reports = [r for r in results if isinstance(r, DeliveryReport)]
    if logger.isEnabledFor(logging.DEBUG):  # one line per event only when asked for
        for item, report in zip(prepared, reports, strict=True):
            producer._log_delivery(item, report, logging.DEBUG)
    log_event(logger, logging.INFO, "batch published", topic=producer.topic, events=len(reports))
    return reports


class _SyncProducer(_ProducerBase):
    def start(self) -> None:
        self._core.start()

    def stop(self) -> int:
        return self._core.stop(self._stop_timeout_s)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _send(self, prepared_batch: list[Prepared]) -> list[DeliveryReport]:
        if not prepared_batch:
            return []
        outcomes: list[list[Outcome]] = []
        all_done = threading.Event()

        def on_done(results: list[Outcome]) -> None:  # on the poll thread
            outcomes.append(results)
            all_done.set()

        self._send_prepared(prepared_batch, on_done)
        if not all_done.wait(self._core.delivery_timeout_s + 10):
            raise PublishError("Kafka did not answer within the delivery timeout")
        return _batch_reports(prepared_batch, outcomes[0], self)

    def _publish(self, event: dict[str, Any]) -> DeliveryReport:
        prepared = self._prepare(event)
        report = self._send([prepared])[0]
        self._log_delivery(prepared, report)
        return report

    def publish_event(self, event: Mapping[str, Any], key: str | None = None) -> DeliveryReport:
        return self._send([self._prepare(type(self)._complete(event), key)])[0]

    def publish_batch(self, events: Iterable[Mapping[str, Any]], key_fn: KeyFn | None = None) -> list[DeliveryReport]:
        return self._send(self._prepare_batch(events, key_fn))


# ---------------------------------------------------------------- inspection


class _InspectionMethods(Generic[R]):
    topic = INSPECTION_TOPIC
    schema_name = INSPECTION
    _complete = staticmethod(builders.complete_inspection_event)
    _default_key = staticmethod(builders.inspection_key)

    def _publish(self, event: dict[str, Any]) -> R:
        raise NotImplementedError

    def publish_inspection_created(
        self,
        inspection_id: str,
        batch_id: str,
        chip_id: str,
        inspection_type: str,
        metadata: Mapping[str, str] | None = None,
        *,
        status: str = "pending",
        wafer_id: str | None = None,
        station_id: str | None = None,
        event_id: str | uuid.UUID | None = None,
        event_time: datetime | None = None,
        correlation_id: str | None = None,
    ) -> R:
        """Publish INSPECTION_CREATED (key: inspection_id); returns (topic, partition, offset)."""
        return self._publish(
            builders.inspection_event(
                "INSPECTION_CREATED",
                inspection_id=inspection_id,
                batch_id=batch_id,
                chip_id=chip_id,
                inspection_type=inspection_type,
                status=status,
                metadata=metadata,
                wafer_id=wafer_id,
                station_id=station_id,
                event_id=event_id,
                event_time=event_time,
                correlation_id=correlation_id,
            )
        )

    def publish_inspection_completed(
        self,
        inspection_id: str,
        batch_id: str,
        chip_id: str,
        inspection_type: str,
        quality_score: float | None = None,
        defects: Sequence[Mapping[str, Any]] | None = None,
        metadata: Mapping[str, str] | None = None,
        *,
        status: str = "completed",
        wafer_id: str | None = None,
        station_id: str | None = None,
        event_id: str | uuid.UUID | None = None,
        event_time: datetime | None = None,
        correlation_id: str | None = None,
    ) -> R:
        """Publish INSPECTION_COMPLETED with its score and defects; returns (topic, partition, offset)."""
        return self._publish(
            builders.inspection_event(
                "INSPECTION_COMPLETED",
                inspection_id=inspection_id,
                batch_id=batch_id,
                chip_id=chip_id,
                inspection_type=inspection_type,
                status=status,
                quality_score=quality_score,
                defects=defects,
                metadata=metadata,
                wafer_id=wafer_id,
                station_id=station_id,
                event_id=event_id,
                event_time=event_time,
                correlation_id=correlation_id,
            )
        )


class InspectionEventProducer(_AsyncProducer, _InspectionMethods[Awaitable[DeliveryReport]]):
    """Async producer of InspectionEvents on ``chip-quality.inspection.events``."""


class SyncInspectionEventProducer(_SyncProducer, _InspectionMethods[DeliveryReport]):
    """Blocking twin of ``InspectionEventProducer`` (for Dagster ops and scripts)."""


# ------------------------------------------------------------------- quality


class _QualityMethods(Generic[R]):
    topic = QUALITY_TOPIC
    schema_name = QUALITY
    _complete = staticmethod(builders.complete_quality_event)
    _default_key = staticmethod(builders.quality_key)

    def _publish(self, event: dict[str, Any]) -> R:
        raise NotImplementedError

    def publish_quality_assessed(
        self,
        inspection_id: str | None,
        batch_id: str | None,
        quality_score: float,
        pass_fail: bool,
        threshold: float,
        *,
        chip_id: str | None = None,
        rule: str | None = None,
        scope: str | None = None,
        metadata: Mapping[str, str] | None = None,
        event_id: str | uuid.UUID | None = None,
        event_time: datetime | None = None,
        correlation_id: str | None = None,
    ) -> R:
        """Publish QUALITY_ASSESSED; returns (topic, partition, offset)."""
        return self._publish(
            builders.quality_event(
                "QUALITY_ASSESSED",
                inspection_id=inspection_id,
                batch_id=batch_id,
                chip_id=chip_id,
                quality_score=quality_score,
                observed_value=quality_score,
                pass_fail=pass_fail,
                threshold=threshold,
                rule=rule,
                scope=scope,
                metadata=metadata,
                event_id=event_id,
                event_time=event_time,
                correlation_id=correlation_id,
            )
        )

    def publish_threshold_violated(
        self,
        inspection_id: str | None = None,
        batch_id: str | None = None,
        quality_score: float | None = None,
        threshold: float | None = None,
        alert_level: str = "WARNING",
        *,
        scope: str | None = None,
        rule: str | None = None,
        observed_value: float | None = None,
        event_date: str | date | None = None,
        defect_type: str | None = None,
        chip_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        event_id: str | uuid.UUID | None = None,
        event_time: datetime | None = None,
        correlation_id: str | None = None,
    ) -> R:
        """Publish THRESHOLD_VIOLATED for an inspection, a lot (LOT) or a day (DAY).

        The scope is inferred from the ids when not given; ``observed_value``
        defaults to ``quality_score``. Pass a deterministic ``event_id`` (e.g.
        ``uuid5``) to make re-publishing idempotent for consumers.
        """
        return self._publish(
            builders.quality_event(
                "THRESHOLD_VIOLATED",
                inspection_id=inspection_id,
                batch_id=batch_id,
                chip_id=chip_id,
                quality_score=quality_score,
                observed_value=observed_value if observed_value is not None else quality_score,
                pass_fail=False,
                threshold=threshold,
                alert_level=alert_level,
                rule=rule,
                scope=scope,
                event_date=event_date,
                defect_type=defect_type,
                metadata=metadata,
                event_id=event_id,
                event_time=event_time,
                correlation_id=correlation_id,
            )
        )

    def publish_threshold_cleared(
        self,
        inspection_id: str | None = None,
        batch_id: str | None = None,
        *,
        rule: str,
        threshold: float | None = None,
        observed_value: float | None = None,
        alert_level: str | None = None,
        scope: str | None = None,
        event_date: str | date | None = None,
        defect_type: str | None = None,
        chip_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        event_id: str | uuid.UUID | None = None,
        event_time: datetime | None = None,
        correlation_id: str | None = None,
    ) -> R:
        """Publish THRESHOLD_CLEARED (quality schema v3): ``rule`` stopped breaking on this subject.

        Same subject fields as the ``publish_threshold_violated`` it ends. Readers still on
        quality schema v1/v2 cannot read it (docs/alerts.md). Pass a deterministic ``event_id``
        to make re-publishing idempotent for consumers.
        """
        return self._publish(
            builders.threshold_cleared_event(
                inspection_id=inspection_id,
                batch_id=batch_id,
                rule=rule,
                threshold=threshold,
                observed_value=observed_value,
                alert_level=alert_level,
                scope=scope,
                event_date=event_date,
                defect_type=defect_type,
                chip_id=chip_id,
                metadata=metadata,
                event_id=event_id,
                event_time=event_time,
                correlation_id=correlation_id,
            )
        )


class QualityEventProducer(_AsyncProducer, _QualityMethods[Awaitable[DeliveryReport]]):
    """Async producer of QualityEvents on ``chip-quality.quality.events``."""


class SyncQualityEventProducer(_SyncProducer, _QualityMethods[DeliveryReport]):
    """Blocking twin of ``QualityEventProducer`` (Dagster ops publish THRESHOLD_VIOLATED/CLEARED with it)."""
