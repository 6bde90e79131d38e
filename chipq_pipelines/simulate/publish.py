"""Publish a simulation to Kafka (``chipq simulate``): events through the library, poison raw.

Valid events go through ``SyncInspectionEventProducer.publish_batch`` (the
same validation and encoding every service uses) in batches of 10,000;
poison records go through a plain ``confluent_kafka.Producer`` to the same
topic, bypassing the serializer, keyed like the event they were made from.
``rate`` paces a steady stream (records per second, sent in quarter-second
slices); a progress bar on stderr shows long runs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from confluent_kafka import KafkaError, Message, Producer

from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.errors import PublishError
from chipq_pipelines.events.producers import SyncInspectionEventProducer
from chipq_pipelines.events.topics import EVENT_TOPICS, INSPECTION_TOPIC, ensure_topics
from chipq_pipelines.simulate import fab
from chipq_pipelines.simulate.generator import Simulation, SimulationConfig, generate
from chipq_pipelines.simulate.stream import PoisonRecord

BATCH_SIZE = 10_000


@dataclass(frozen=True)
class PublishReport:
    """What a publish sent (every count is acknowledged by Kafka)."""

    topic: str
    events_published: int  # valid event records, duplicates included
    unique_events: int
    duplicates: int
    out_of_order: int
    late: int
    poison: int
    lots: int
    excursion_lots: int
    days_spanned: int
    first_event_time: datetime
    last_event_time: datetime
    seconds: float
    truth_path: Path | None = None
    poison_by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def records(self) -> int:
        return self.events_published + self.poison

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


class _ProgressBar:
    """``[#####.....]  52%  52,000/100,000 records  41k/s`` on stderr; a line per 10 % when not a terminal."""

    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        self.total = max(1, total)
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and stream.isatty()
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = -1

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if now - self._last_draw >= 0.2 or done >= self.total:
                self._last_draw = now
                self.stream.write("\r" + self._line(done, now))
                self.stream.flush()
        elif (decile := done * 10 // self.total) > self._last_decile:
            self._last_decile = decile
            self.stream.write(self._line(done, now) + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _line(self, done: int, now: float) -> str:
        share = done / self.total
        filled = int(share * 30)
        rate = done / max(now - self.started, 1e-9)
        bar = "#" * filled + "." * (30 - filled)
        return f"[{bar}] {share:4.0%}  {done:,}/{self.total:,} records  {rate / 1000:,.1f}k/s"


def write_truth(sim: Simulation, path: Path) -> Path:
    """Write the ground truth JSON atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(sim.truth_dict(), indent=2) + "\n")
    os.replace(partial, path)
    return path


def publish_simulation(
    sim: Simulation,
    config: KafkaConfig | None = None,
    *,
    topic: str | None = None,
    rate: float | None = None,
    progress: bool = True,
    truth_path: Path | None = None,
    batch_size: int = BATCH_SIZE,
    stream: TextIO | None = None,
) -> PublishReport:
    """Ensure the topics, write the truth file, then publish every record of ``sim`` in publish order.

    ``topic`` overrides ``chip-quality.inspection.events`` (it and its DLQ are
    created when missing). ``rate`` paces records per second. Raises
    ``PublishError`` when Kafka did not acknowledge every record.
    """
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be positive (records per second), got {rate!r}")
    config = config or KafkaConfig.from_env()
    target = topic or INSPECTION_TOPIC
    # The platform's own topic: all declared topics (the pipeline reads the quality topic too).
    ensure_topics(config, topics=EVENT_TOPICS if target == INSPECTION_TOPIC else [target])
    if truth_path is not None:
        truth_path = write_truth(sim, truth_path)
    chunk = batch_size if rate is None else max(1, min(batch_size, int(rate / 4)))
    bar = _ProgressBar(len(sim.records), stream or sys.stderr, progress)
    poison_failures: list[str] = []
    poison_sent = Counter[str]()

    def on_poison(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            poison_failures.append(f"{err.name()}: {err.str()}")

    raw_producer = Producer(config.librdkafka_config(**{"enable.idempotence": True, "acks": "all", "linger.ms": 5}))
    started = time.monotonic()
    sent = events_sent = 0
    try:
        with SyncInspectionEventProducer(config, topic=target) as producer:
            for begin in range(0, len(sim.records), chunk):
                part = sim.records[begin : begin + chunk]
                events = [r for r in part if not isinstance(r, PoisonRecord)]
                for record in part:
                    if isinstance(record, PoisonRecord):
                        raw_producer.produce(target, value=record.value, key=record.key, on_delivery=on_poison)
                        poison_sent[record.kind] += 1
                raw_producer.poll(0)
                producer.publish_batch(events)
                events_sent += len(events)
                sent += len(part)
                bar.update(sent)
                if rate is not None:
                    time.sleep(max(0.0, started + sent / rate - time.monotonic()))
    finally:
        unsent = raw_producer.flush(30)
        bar.close()
    if unsent or poison_failures:
        reason = poison_failures[0] if poison_failures else "flush timed out"
        raise PublishError(f"{unsent + len(poison_failures)} poison record(s) not delivered; first: {reason}", [])
    counts = sim.counts
    return PublishReport(
        topic=target,
        events_published=events_sent,
        unique_events=counts.unique_events,
        duplicates=counts.duplicates,
        out_of_order=counts.out_of_order,
        late=counts.late,
        poison=sum(poison_sent.values()),
        lots=len(sim.lots),
        excursion_lots=len(sim.truth.excursions),
        days_spanned=sim.days_spanned,
        first_event_time=sim.first_event_time,
        last_event_time=sim.last_event_time,
        seconds=time.monotonic() - started,
        truth_path=truth_path,
        poison_by_kind=dict(poison_sent),
    )


def default_start(events: int, lots: int | None = None, config: SimulationConfig | None = None) -> datetime:
    """A start that makes the run end within the current hour (UTC), on a whole hour (stable for an hour)."""
    config = config or SimulationConfig()
    n_lots = lots or max(1, round(events // 2 / (fab.WAFERS_PER_LOT * config.chips_per_wafer)))
    span_s = n_lots * config.lot_interval_s + fab.WAFERS_PER_LOT * config.wafer_pitch_s
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return hour - timedelta(hours=int(span_s // 3600) + 1)


def summary_lines(sim: Simulation, report: PublishReport) -> list[str]:
    """A short human summary of a published simulation."""
    kinds = Counter(e.kind for e in sim.truth.excursions)
    stations = sorted({e.station_id for e in sim.truth.excursions if e.station_id})
    base = sim.truth.baseline
    poison = ", ".join(f"{n} {kind}" for kind, n in sorted(report.poison_by_kind.items())) or "none"
    excursions = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "none"
    if stations:
        excursions += f" (drifting {', '.join(stations)})"
    lines = [
        f"published {report.records:,} records to {report.topic} in {report.seconds:.1f} s "
        f"({report.records_per_second / 1000:,.1f}k/s)",
        f"  events   {report.unique_events:,} ({report.unique_events // 2:,} inspections, created + completed)"
        f" + {report.duplicates:,} duplicates; {report.out_of_order:,} out of order, {report.late:,} late",
        f"  poison   {report.poison:,} ({poison})",
        f"  lots     {report.lots:,} ({sim.wafers:,} wafers) over {report.days_spanned} day(s): "
        f"{report.first_event_time:%Y-%m-%d %H:%M} → {report.last_event_time:%Y-%m-%d %H:%M} UTC",
        f"  clean    {len(sim.truth.clean_lots):,} lots, mean score {base['mean_quality_score']:.3f}"
        f" ± {base['mean_quality_score_sd']:.4f}, {base['defect_density']:.2f} defects/chip",
        f"  excursions {report.excursion_lots} lots: {excursions}",
    ]
    if report.truth_path is not None:
        lines.append(f"  truth    {report.truth_path}")
    return lines


def simulate_command(
    events: int,
    seed: int,
    lots: int | None = None,
    rate: float | None = None,
    truth: Path | None = None,
    start: datetime | None = None,
    *,
    config: KafkaConfig | None = None,
    topic: str | None = None,
    progress: bool = True,
    echo: Callable[[str], Any] = print,
) -> PublishReport:
    """What ``chipq simulate`` runs: generate, publish, print a short summary; returns the report.

    ``start`` (naive = UTC) defaults to ``default_start``; pass it for a
    byte-identical re-run. ``topic`` defaults to the one the pipeline reads
    (``CHIPQ_INSPECTION_TOPIC``, else ``chip-quality.inspection.events``).
    Raises ``ValueError`` on bad arguments.
    """
    from chipq_pipelines.environment import inspection_topic_from_env

    topic = topic or inspection_topic_from_env()
    if start is not None and start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    began = time.monotonic()
    sim = generate(events, seed=seed, lots=lots, start=start or default_start(events, lots))
    echo(f"generated {len(sim.records):,} records for {len(sim.lots):,} lots in {time.monotonic() - began:.1f} s")
    report = publish_simulation(sim, config, topic=topic, rate=rate, progress=progress, truth_path=truth)
    for line in summary_lines(sim, report):
        echo(line)
    return report
