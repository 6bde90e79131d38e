"""Sample inspection traffic for warehouse tests, the analysts' docs and demos.

Events look exactly like the events library's decoded form: ``event_id`` uuid text,
``event_time`` an aware UTC datetime, defects as dicts, metadata dict[str, str].
Not used by the pipeline itself.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from chipq_pipelines.warehouse.landing import land_batch
from chipq_pipelines.warehouse.types import KafkaCoordinates, LandingResult

INSPECTION_TOPIC = "chip-quality.inspection.events"
QUALITY_TOPIC = "chip-quality.quality.events"
BASE_TIME = dt.datetime(2025, 3, 10, 8, 0, tzinfo=dt.UTC)
DEFECT_TYPES = ("scratch", "edge-ring", "center", "loc", "donut")
SEVERITIES = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
HOSTILE_LOT_IDS = (
    "LOT-O'Brien",
    'LOT-"quoted"',
    "LOT/2025/03\\a",
    "lot-ünïcødé-晶圆-🧪",
    "'; DROP TABLE raw.inspection_events; --",
    "LOT %s $1 ? :name",
)


def inspection_event(**overrides: Any) -> dict[str, Any]:
    """A completed inspection event with one defect; override any field."""
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "event_type": "INSPECTION_COMPLETED",
        "event_time": BASE_TIME,
        "correlation_id": "corr-1",
        "inspection_id": f"insp-{uuid.uuid4().hex[:8]}",
        "batch_id": "LOT-A",
        "chip_id": f"chip-{uuid.uuid4().hex[:8]}",
        "wafer_id": "W01",
        "station_id": None,
        "inspection_type": "optical",
        "status": "COMPLETED",
        "quality_score": 0.9,
        "defects": [defect()],
        "metadata": {"line": "fab-1"},
    }
    event.update(overrides)
    return event


def defect(defect_type: str = "scratch", severity: str = "LOW", confidence: float = 0.8) -> dict[str, Any]:
    """One decoded defect record."""
    return {"defect_type": defect_type, "severity": severity, "confidence": confidence, "location": {"x": 1.5, "y": -2}}


def quality_event(**overrides: Any) -> dict[str, Any]:
    """A DAY-scope THRESHOLD_VIOLATED quality event; override any field."""
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "event_type": "THRESHOLD_VIOLATED",
        "event_time": BASE_TIME,
        "correlation_id": "",
        "scope": "DAY",
        "inspection_id": None,
        "batch_id": None,
        "chip_id": None,
        "event_date": "2025-03-10",
        "defect_type": "scratch",
        "rule": "defect_rate_max",
        "threshold": 0.05,
        "observed_value": 0.08,
        "quality_score": None,
        "pass_fail": False,
        "alert_level": "CRITICAL",
        "metadata": {},
    }
    event.update(overrides)
    return event


def at(partition: int, offset: int, topic: str = INSPECTION_TOPIC, value: bytes | None = None) -> KafkaCoordinates:
    """Kafka coordinates of a sample record."""
    return KafkaCoordinates(topic=topic, partition=partition, offset=offset, key=b"k", timestamp_ms=1, value=value)


@dataclass
class Stream:
    """A topic's records in Kafka order per partition: (event, coordinates)."""

    records: list[tuple[dict[str, Any], KafkaCoordinates]]
    partitions: int

    def end_offsets(self) -> dict[int, int]:
        """Next offset after the stream, per partition."""
        ends = dict.fromkeys(range(self.partitions), 0)
        for _, coordinates in self.records:
            ends[coordinates.partition] = max(ends[coordinates.partition], coordinates.offset + 1)
        return ends


def random_stream(seed: int, *, lots: Sequence[str] = ("LOT-A", "LOT-B", "LOT-C"), partitions: int = 3) -> Stream:
    """Randomized inspection traffic over several lots and days.

    Includes producer retries (same event twice), out-of-order and late events,
    several completions of one inspection (some at the exact same event_time),
    unscored completions, defect-free chips, canaries and CREATED events.
    """
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for inspection_number in range(rng.randint(60, 120)):
        lot_id = rng.choice(list(lots))
        inspection_id = f"insp-{seed}-{inspection_number}"
        chip_id = f"chip-{rng.randint(0, 50)}"  # chips repeat across inspections and lots
        created_at = BASE_TIME + dt.timedelta(hours=rng.uniform(0, 24 * 4))
        canary = {"chipq_canary": "true"} if rng.random() < 0.05 else {}
        if canary and rng.random() < 0.5:
            lot_id = "chipq-canary"  # a real canary; the other half are marked in real lots, so not canaries
        common = {"inspection_id": inspection_id, "batch_id": lot_id, "chip_id": chip_id, "metadata": canary}
        events.append(
            inspection_event(
                event_type="INSPECTION_CREATED", event_time=created_at, quality_score=None, defects=[], **common
            )
        )
        completed_at = created_at
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            if rng.random() < 0.8:  # sometimes a re-completion carries the same timestamp
                completed_at = completed_at + dt.timedelta(minutes=rng.uniform(1, 30 * 60))
            score = None if rng.random() < 0.1 else round(rng.uniform(0.5, 1.0), 3)
            defects = [
                defect(rng.choice(DEFECT_TYPES), rng.choice(SEVERITIES), round(rng.random(), 3))
                for _ in range(rng.choice((0, 0, 1, 1, 2, 4)))
            ]
            events.append(inspection_event(event_time=completed_at, quality_score=score, defects=defects, **common))
    rng.shuffle(events)  # out of order, late events land after their day was written
    for event in rng.sample(events, k=len(events) // 10):  # producer retries
        events.append(dict(event))
    offsets = dict.fromkeys(range(partitions), 0)
    records = []
    for event in events:
        partition = sum(event["inspection_id"].encode()) % partitions  # keyed by inspection_id
        records.append((event, at(partition, offsets[partition])))
        offsets[partition] += 1
    return Stream(records=records, partitions=partitions)


def land_stream(
    conn: duckdb.DuckDBPyConnection, stream: Stream, *, chunks: int = 4, **kwargs: Any
) -> list[LandingResult]:
    """Land a stream in several batches, each covering the next slice of every partition."""
    results = []
    by_partition: dict[int, list[tuple[dict[str, Any], KafkaCoordinates]]] = {p: [] for p in range(stream.partitions)}
    for record in stream.records:
        by_partition[record[1].partition].append(record)
    for chunk in range(chunks):
        batch = []
        ranges = {}
        for partition, records in by_partition.items():
            size = -(-len(records) // chunks)  # ceil: offsets are contiguous from 0, so index = offset
            low = min(chunk * size, len(records))
            high = min(low + size, len(records))
            ranges[partition] = (low, high)
            batch.extend(records[low:high])
        results.append(
            land_batch(conn, topic=INSPECTION_TOPIC, offset_ranges=ranges, inspection_events=batch, **kwargs)
        )
    return results
