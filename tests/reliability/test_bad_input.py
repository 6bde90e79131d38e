"""Bad input on one topic: every record is landed or rejected with a reason, and processing goes on."""

from __future__ import annotations

import datetime as dt
import json
import random
import time
import uuid
from collections import defaultdict
from typing import Any

import duckdb
import pytest
from confluent_kafka import KafkaException, Producer

from chipq_pipelines.events import builders
from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.errors import EventValidationError, PublishError
from chipq_pipelines.events.producers import SyncInspectionEventProducer
from chipq_pipelines.events.schemas import INSPECTION, load_schema
from chipq_pipelines.events.serialization import AvroSerializer
from chipq_pipelines.simulate.stream import POISON_KINDS, poison_record

pytestmark = [pytest.mark.reliability, pytest.mark.short]

VALID_V2 = 2000
VALID_V1 = 400
POISON_SHARE = 0.01  # of the valid events, per poison kind
WEIRD_LOTS = [
    "LOT-'quoted'",
    'LOT-"double"',
    "LOT/slash/ü",
    "LOT\\back\\slash",
    "LOT-日本語-✓",
    "LOT-B2'; DROP TABLE raw.defects; --",
    "LOT-1 OR 1=1",
    "LOT-%s-{0}-$1",
]
#: kind -> what the stored reason must mention (None: any non-empty reason)
EXPECTED_REASON: dict[str, str | None] = {
    **{kind: None for kind in POISON_KINDS},
    "json_missing_ids": None,
    "score_nan": "NaN",
    "score_negative": "outside [0, 1]",
    "score_above_one": "outside [0, 1]",
    "time_1970": "before",
    "time_2200": "after ingest",
}


def _complete(event: dict[str, Any]) -> dict[str, Any]:
    return builders.complete_inspection_event(event)


def _bad_records(rng: random.Random, valid: list[dict[str, Any]]) -> list[tuple[str, bytes, bytes | None]]:
    """(kind, value, key) of every bad record; keys are ``bad/<kind>/<i>`` so rejections can be matched."""
    v2 = AvroSerializer(load_schema(INSPECTION), config=KafkaConfig())
    per_kind = max(1, round(POISON_SHARE * len(valid)))
    records: list[tuple[str, bytes, bytes | None]] = []
    for kind in POISON_KINDS:
        for i in range(per_kind):
            poison = poison_record(rng, kind, _complete(rng.choice(valid)), v2)
            records.append((kind, poison.value, f"bad/{kind}/{i}".encode()))
    for i in range(per_kind):  # a service sending JSON without its ids
        event = {k: v for k, v in _complete(rng.choice(valid)).items() if k not in ("inspection_id", "batch_id")}
        records.append(
            ("json_missing_ids", json.dumps(event, default=str).encode(), f"bad/json_missing_ids/{i}".encode())
        )
    # Values the producer refuses (NaN, out of range) or lets through (absurd times), encoded bypassing its check.
    mutations = {
        "score_nan": {"quality_score": float("nan")},
        "score_negative": {"quality_score": -0.25},
        "score_above_one": {"quality_score": 1.5},
        "time_1970": {"event_time": dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=dt.UTC)},
        "time_2200": {"event_time": dt.datetime(2200, 1, 1, tzinfo=dt.UTC)},
    }
    for kind, change in mutations.items():
        for i in range(per_kind):
            event = _complete({**rng.choice(valid), "event_type": "INSPECTION_COMPLETED", "status": "completed"})
            event.update(change, event_id=str(uuid.uuid4()))
            records.append((kind, v2.serialize(event), f"bad/{kind}/{i}".encode()))
    return records


@pytest.mark.case("bad input", "all bad input mixed into one stream of valid v1 + v2 events")
def test_bad_input_is_rejected_with_a_reason_and_processing_goes_on(
    kafka_bootstrap, make_env, rel, row, sub_rows
) -> None:
    env = make_env(kafka_bootstrap)
    rng = random.Random(7)
    valid_v2 = rel.make_events(VALID_V2, "BAD")
    for index, event in enumerate(valid_v2[: len(WEIRD_LOTS) * 20]):  # weird lot ids on whole inspections
        lot = WEIRD_LOTS[(index // 20) % len(WEIRD_LOTS)]
        event["batch_id"] = lot
        event["inspection_id"] = f"{lot}/INS-{index // 2}"
    valid_v1 = [_complete(e) for e in rel.make_events(VALID_V1, "V1")]
    v1 = AvroSerializer(load_schema(INSPECTION, 1), config=KafkaConfig())
    v1_records = []
    for event in valid_v1:
        event.pop("recipe_id", None)
        v1_records.append(("v1", v1.serialize(event), event["inspection_id"].encode()))
    no_key = [_complete(e) for e in rel.make_events(40, "NOKEY")]
    v2 = AvroSerializer(load_schema(INSPECTION), config=KafkaConfig())
    no_key_records = [("no_kafka_key", v2.serialize(e), None) for e in no_key]
    bad = _bad_records(rng, valid_v2)

    # Interleave: library batches of valid v2 events between raw records of every other kind.
    raw_records = v1_records + no_key_records + bad
    rng.shuffle(raw_records)
    raw_producer = Producer({"bootstrap.servers": env.bootstrap, "enable.idempotence": True, "acks": "all"})
    failures: list[str] = []

    def on_delivery(err, _msg) -> None:
        if err is not None:
            failures.append(str(err))

    slices = 10
    with SyncInspectionEventProducer(env.kafka_config, topic=env.inspection_topic) as producer:
        for part in range(slices):
            producer.publish_batch(valid_v2[part::slices], key_fn=lambda e: e["inspection_id"])
            for _kind, value, key in raw_records[part::slices]:
                raw_producer.produce(env.inspection_topic, value=value, key=key, on_delivery=on_delivery)
            raw_producer.poll(0)
    assert raw_producer.flush(30) == 0 and not failures, failures

    oversize = _oversized(env, rel, sub_rows)

    started = time.monotonic()
    rel.catch_up()
    ingest_s = time.monotonic() - started
    valid_ids = {e["event_id"] for e in valid_v2} | {e["event_id"] for e in valid_v1} | {e["event_id"] for e in no_key}
    valid_ids |= oversize["landed_ids"]
    counts = rel.tally(env, valid_ids)
    conn = duckdb.connect(str(env.warehouse), read_only=True)
    try:
        rejected = conn.execute(
            "SELECT key, reason FROM ops.rejected_events WHERE topic = ?", [env.inspection_topic]
        ).fetchall()
        stored_lots = {r[0] for r in conn.execute("SELECT DISTINCT batch_id FROM raw.inspection_events").fetchall()}
        mart_lots = {r[0] for r in conn.execute("SELECT lot_id FROM marts.lot_quality_scores").fetchall()}
        v1_landed = conn.execute(
            "SELECT count(*) FROM raw.inspection_events WHERE event_id IN (SELECT unnest(?))",
            [[e["event_id"] for e in valid_v1]],
        ).fetchone()[0]
        no_key_landed = conn.execute(
            "SELECT count(*) FROM raw.inspection_events WHERE event_id IN (SELECT unnest(?))",
            [[e["event_id"] for e in no_key]],
        ).fetchone()[0]
    finally:
        conn.close()

    by_kind: dict[str, list[str]] = defaultdict(list)
    unmatched = []
    for key, reason in rejected:
        parts = bytes(key).decode(errors="replace").split("/") if key is not None else []
        if len(parts) == 3 and parts[0] == "bad":
            by_kind[parts[1]].append(reason)
        else:
            unmatched.append(reason)
    sent_per_kind: dict[str, int] = defaultdict(int)
    for kind, _value, _key in bad:
        sent_per_kind[kind] += 1

    all_ok = True
    for kind, sent in sent_per_kind.items():
        reasons = by_kind.get(kind, [])
        must = EXPECTED_REASON[kind]
        ok = len(reasons) == sent and all(r and (must is None or must in r) for r in reasons)
        all_ok &= ok
        entry = sub_rows("bad input", _LABELS.get(kind, kind))
        entry.sent, entry.rejected, entry.landed = sent, len(reasons), 0
        entry.lost = sent - len(reasons)
        entry.duplicated = 0
        entry.result = "pass" if ok else "**FAIL**"
        entry.note(f"reason: “{reasons[0][:140]}”" if reasons else "no rejection stored")
    lots_ok = set(WEIRD_LOTS) <= stored_lots and set(WEIRD_LOTS) <= mart_lots
    entry = sub_rows("bad input", "lot ids with quotes, slashes, unicode, SQL fragments (8 lots, 160 events)")
    entry.sent, entry.landed, entry.rejected, entry.lost, entry.duplicated = 160, 160 if lots_ok else None, 0, 0, 0
    entry.result = "pass" if lots_ok else "**FAIL**"
    entry.note("stored verbatim in raw.inspection_events.batch_id and marts.lot_quality_scores.lot_id")
    if not lots_ok:
        entry.note(f"missing: {sorted(set(WEIRD_LOTS) - (stored_lots & mart_lots))}")
    all_ok &= lots_ok
    entry = sub_rows("bad input", "schema v1 and v2 mixed on one topic")
    mixed = rel.tally(env, {e["event_id"] for e in valid_v2} | {e["event_id"] for e in valid_v1})
    entry.sent, entry.landed, entry.rejected = VALID_V1 + VALID_V2, mixed.landed_ids, 0
    entry.lost, entry.duplicated = mixed.lost, 0
    entry.result = "pass" if v1_landed == VALID_V1 and counts.lost == 0 else "**FAIL**"
    entry.note(f"{v1_landed} of {VALID_V1} v1 records decoded through the v2 reader (recipe_id null)")
    all_ok &= v1_landed == VALID_V1
    entry = sub_rows("bad input", "records without a Kafka key (valid values)")
    entry.sent, entry.landed, entry.rejected, entry.lost, entry.duplicated = 40, no_key_landed, 0, 40 - no_key_landed, 0
    entry.result = "pass" if no_key_landed == 40 else "**FAIL**"
    entry.note("the key is routing only: a valid value without one lands")
    all_ok &= no_key_landed == 40

    large, large_id, large_delivered = oversize["large_event"]
    if large_delivered:
        large.landed = 1 - rel.tally(env, {large_id}).lost
        large.lost = 1 - large.landed
        large.result = "pass" if large.landed == 1 else "**FAIL**"
        all_ok &= large.landed == 1
    else:
        large.result = "pass"
        large.note("refused by a limit below 1.5 MB: documented, not a loss")

    row.sent = len(valid_ids) + len(bad) + oversize["sent_bad"]
    row.landed = counts.landed_ids
    row.rejected = counts.rejected
    row.lost = counts.lost + (len(bad) - sum(len(v) for v in by_kind.values()))
    row.duplicated = counts.duplicated
    row.note(
        f"{len(bad)} bad records among {len(valid_ids)} valid events; one catch-up took {ingest_s:.1f} s"
        + (f"; {len(unmatched)} rejections of valid events: {unmatched[:2]}" if unmatched else "")
    )
    assert counts.lost == 0 and counts.duplicated == 0
    assert not unmatched, unmatched[:5]
    assert all_ok, {k: (sent_per_kind[k], len(by_kind.get(k, []))) for k in sent_per_kind}


_LABELS = {
    "garbage": "poison 1 %: random garbage bytes",
    "wrong_magic": "poison 1 %: JSON instead of Avro (wrong magic)",
    "truncated": "poison 1 %: truncated Avro",
    "unknown_fingerprint": "poison 1 %: single-object header of an unknown schema",
    "json_missing_ids": "missing keys: JSON event without inspection_id / batch_id",
    "score_nan": "NaN quality score (bypassing the producer's check)",
    "score_negative": "negative quality score (bypassing the producer's check)",
    "score_above_one": "quality score 1.5 (bypassing the producer's check)",
    "time_1970": "event_time 1970-01-01",
    "time_2200": "event_time 2200-01-01",
}


def _oversized(env, rel, sub_rows) -> dict[str, Any]:
    """Oversized messages: the producer's limit, the broker's limit, and a big one within both."""
    rng = random.Random(3)
    result: dict[str, Any] = {"landed_ids": set(), "sent_bad": 0}

    def big_event(size: int) -> dict[str, Any]:
        event = _complete(rel.make_events(2, "HUGE")[1])
        event["metadata"] = {"blob": rng.randbytes(size // 2).hex()}  # incompressible
        return event

    # 1) Through the events library: librdkafka's message.max.bytes (1 MB) refuses a 3 MB event locally.
    started = time.monotonic()
    entry = sub_rows("bad input", "oversized 3 MB event through the events library")
    event = big_event(3_000_000)
    with SyncInspectionEventProducer(env.kafka_config, topic=env.inspection_topic) as producer:
        try:
            producer.publish_batch([event])
            outcome = "sent"
        except (PublishError, EventValidationError) as exc:
            outcome = f"{type(exc).__name__}: {str(exc)[:160]}"
        metrics = producer.get_metrics()
    entry.seconds = time.monotonic() - started
    entry.sent, entry.landed, entry.rejected, entry.lost, entry.duplicated = 0, 0, 0, 0, 0
    ok = outcome != "sent" and metrics["messages_failed"] == 1 and metrics["messages_sent"] == 0
    entry.result = "pass" if ok else "**FAIL**"
    entry.note(f"producer-side error, nothing sent: {outcome}; metrics messages_failed={metrics['messages_failed']}")

    # 2) Raw producer allowed 10 MB: the broker (message.max.bytes 2 MiB) refuses a 3 MB record.
    started = time.monotonic()
    entry = sub_rows("bad input", "oversized 3 MB record past the producer limit: broker refuses")
    errors: list[str] = []
    producer = Producer(
        {
            "bootstrap.servers": env.bootstrap,
            "message.max.bytes": 10_000_000,
            "acks": "all",
            "compression.type": "none",
            "delivery.timeout.ms": 20000,
        }
    )
    value = AvroSerializer(load_schema(INSPECTION), config=KafkaConfig()).serialize(big_event(3_000_000))
    try:
        producer.produce(
            env.inspection_topic, value=value, key=b"huge", on_delivery=lambda e, _m: errors.append(str(e))
        )
    except KafkaException as exc:
        errors.append(f"produce(): {exc}")
    producer.flush(30)
    entry.seconds = time.monotonic() - started
    refused = bool(errors) and errors[0] != "None"
    entry.sent, entry.landed, entry.rejected, entry.lost, entry.duplicated = 0, 0, 0, 0, 0
    entry.result = "pass" if refused else "**FAIL**"
    entry.note(f"delivery error: {errors[0][:160] if errors else 'none'}")

    # 3) A 1.5 MB valid event within both limits (raw producer allowed 4 MB): it lands like any other.
    entry = sub_rows("bad input", "large 1.5 MB valid event within the broker limit")
    event = big_event(1_500_000)
    value = AvroSerializer(load_schema(INSPECTION), config=KafkaConfig()).serialize(event)
    errors = []
    producer = Producer({"bootstrap.servers": env.bootstrap, "message.max.bytes": 4_000_000, "acks": "all"})
    producer.produce(env.inspection_topic, value=value, key=b"large", on_delivery=lambda e, _m: errors.append(str(e)))
    producer.flush(30)
    delivered = errors == ["None"]
    entry.sent = 1 if delivered else 0
    entry.rejected, entry.duplicated = 0, 0
    entry.note(f"{len(value) / 1e6:.2f} MB record {'acknowledged' if delivered else 'refused: ' + errors[0][:100]}")
    entry.landed = None
    result["large_event"] = (entry, event["event_id"], delivered)
    if delivered:
        result["landed_ids"].add(event["event_id"])
    return result
