"""The messy parts of a real stream: duplicates, out-of-order and late events, poison records.

Every event gets a publish time: normally its event_time plus a network
latency of 0.05–2 s; the stream is then sorted by publish time. Defaults:

* ``out_of_order_share`` 2 %: published 30 s–15 min after their event_time,
  so they land behind later events (a COMPLETED can precede its CREATED).
* ``late_share`` 0.5 %: published 1–30 h after their event_time (a buffered
  tool uploading late); their event_time is hours earlier than neighbours'.
* ``duplicate_share`` 1 %: the exact event (same event_id, same bytes)
  re-sent 0.5 s–2 min later, as an at-least-once retry does.
* ``poison_share`` 0.1 % of the events: records that do not decode, built
  from a valid encoding and produced bypassing the serializer — random
  ``garbage`` bytes, ``wrong_magic`` (the event as JSON), ``truncated``
  Avro, ``unknown_fingerprint`` (single-object header of no known schema).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.schemas import INSPECTION, load_schema
from chipq_pipelines.events.serialization import SINGLE_OBJECT_MAGIC, AvroSerializer

POISON_KINDS = ("garbage", "wrong_magic", "truncated", "unknown_fingerprint")
HOUR_MS = 3_600_000


@dataclass(frozen=True)
class PoisonRecord:
    """A record that must land in the rejected/dead-letter path: raw value bytes, its Kafka key, its kind."""

    kind: str
    value: bytes
    key: str


Record = dict[str, Any] | PoisonRecord


@dataclass
class StreamCounts:
    """What was injected into the stream."""

    events: int = 0  # valid event records, duplicates included
    unique_events: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    late: int = 0
    poison: dict[str, int] = field(default_factory=dict)

    @property
    def poison_total(self) -> int:
        return sum(self.poison.values())

    @property
    def records(self) -> int:
        return self.events + self.poison_total


@dataclass(frozen=True)
class MessShares:
    """Shares of the messy parts (see the module docstring)."""

    duplicate_share: float = 0.01
    out_of_order_share: float = 0.02
    late_share: float = 0.005
    poison_share: float = 0.001

    def __post_init__(self) -> None:
        for name in ("duplicate_share", "out_of_order_share", "late_share", "poison_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 0.5:
                raise ValueError(f"{name} must lie in [0, 0.5], got {value!r}")
        if self.out_of_order_share + self.late_share > 0.5:
            raise ValueError("out_of_order_share + late_share must not exceed 0.5")


def _encoder() -> AvroSerializer:
    # Single-object encoding, no registry: poison is built offline and deterministically.
    return AvroSerializer(load_schema(INSPECTION), config=KafkaConfig())


def poison_record(rng: random.Random, kind: str, event: dict[str, Any], encoder: AvroSerializer) -> PoisonRecord:
    """A poison record of ``kind`` built from ``event``'s valid encoding."""
    raw = encoder.serialize(event)
    key = str(event["inspection_id"])
    if kind == "garbage":
        body = bytearray(rng.randbytes(rng.randint(16, 160)))
        body[0] = rng.choice([b for b in range(1, 256) if b != SINGLE_OBJECT_MAGIC[0]])  # no magic by chance
        value = bytes(body)
    elif kind == "wrong_magic":  # a service that sent JSON instead of Avro
        value = json.dumps(event, default=str, sort_keys=True).encode()
    elif kind == "truncated":
        value = raw[: rng.randint(11, len(raw) - 2)]
    elif kind == "unknown_fingerprint":
        value = SINGLE_OBJECT_MAGIC + rng.randbytes(8) + raw[10:]
    else:
        raise ValueError(f"unknown poison kind {kind!r}; one of {', '.join(POISON_KINDS)}")
    return PoisonRecord(kind, value, key)


def messy_stream(
    rng: random.Random, timed: Sequence[tuple[int, dict[str, Any]]], shares: MessShares
) -> tuple[list[Record], StreamCounts]:
    """The publish order of ``timed`` (event_time ms, event) with the configured mess injected."""
    counts = StreamCounts(unique_events=len(timed))
    entries: list[tuple[int, int, Record]] = []
    seq = 0
    late_cut = shares.late_share
    ooo_cut = late_cut + shares.out_of_order_share
    for at_ms, event in timed:
        draw = rng.random()
        if draw < late_cut:
            publish = at_ms + rng.randint(HOUR_MS, 30 * HOUR_MS)
            counts.late += 1
        elif draw < ooo_cut:
            publish = at_ms + rng.randint(30_000, 900_000)
            counts.out_of_order += 1
        else:
            publish = at_ms + rng.randint(50, 2_000)
        entries.append((publish, seq, event))
        seq += 1
        if rng.random() < shares.duplicate_share:
            entries.append((publish + rng.randint(500, 120_000), seq, event))
            seq += 1
            counts.duplicates += 1
    counts.events = len(entries)
    n_poison = round(shares.poison_share * len(timed))
    if n_poison and timed:
        encoder = _encoder()
        for index in range(n_poison):
            at_ms, event = timed[rng.randrange(len(timed))]
            kind = POISON_KINDS[index % len(POISON_KINDS)]
            entries.append((at_ms + rng.randint(50, 2_000), seq, poison_record(rng, kind, event, encoder)))
            seq += 1
            counts.poison[kind] = counts.poison.get(kind, 0) + 1
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    return [record for _, _, record in entries], counts
