"""The events library on the real broker: round trips, DLQ, commits, cancellation, groups, health."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from chipq_pipelines.events import builders
from chipq_pipelines.events.base_consumer import BaseEventConsumer, ConsumedRecord
from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.context import correlation_context
from chipq_pipelines.events.errors import EventValidationError, PublishError, TopicNotFoundError
from chipq_pipelines.events.health import KafkaClientManager
from chipq_pipelines.events.producers import (
    InspectionEventProducer,
    SyncQualityEventProducer,
)
from chipq_pipelines.events.schemas import load_schema
from chipq_pipelines.events.serialization import AvroSerializer
from chipq_pipelines.events.topics import dlq_topic, ensure_topics

pytestmark = pytest.mark.integration

SEVERITIES = ("LOW", "MEDIUM", "HIGH", "CRITICAL")


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list[Message]:
    """Every record of ``topic`` from the beginning, until ``expected`` were read or ``timeout``."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.2):
                if message.error() is None:
                    messages.append(message)
    finally:
        consumer.close()
    return messages


def high_watermarks(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    finally:
        consumer.close()


def headers_of(message: Message) -> dict[str, Any]:
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in message.headers() or []}


@pytest.fixture
def event_topic(new_topic: Callable[..., str], kafka_bootstrap: str) -> Callable[..., str]:
    """Factory: a fresh topic plus its dead-letter topic."""
    from confluent_kafka.admin import AdminClient, NewTopic

    def make(partitions: int = 3) -> str:
        topic = new_topic("events", partitions)
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        admin.create_topics([NewTopic(dlq_topic(topic), 1, 1)])[dlq_topic(topic)].result(timeout=30)
        return topic

    return make


def random_inspection(rng: random.Random, index: int) -> dict[str, Any]:
    completed = rng.random() < 0.7
    return builders.inspection_event(
        "INSPECTION_COMPLETED" if completed else "INSPECTION_CREATED",
        inspection_id=f"INSP-{index:06d}",
        batch_id=f"LOT-{rng.randrange(40):03d}",
        chip_id=f"CHIP-{rng.randrange(10**6)}",
        inspection_type=rng.choice(["visual", "electrical", "x-ray"]),
        status="completed" if completed else "pending",
        quality_score=rng.random() if completed else None,
        defects=[
            {
                "defect_type": rng.choice(["scratch", "void", "bridge", "particle"]),
                "severity": rng.choice(SEVERITIES),
                "confidence": rng.random(),
                "location": {"x": rng.uniform(-150, 150), "y": rng.uniform(-150, 150)},
            }
            for _ in range(rng.randrange(4) if completed else 0)
        ],
        metadata={"station": f"ST-{rng.randrange(9)}", "note": "ünïcode ✓"} if rng.random() < 0.5 else {},
        wafer_id=f"W-{rng.randrange(25)}" if rng.random() < 0.5 else None,
        station_id=None,
        event_time=datetime(2025, 1, 1, tzinfo=UTC) + timedelta(milliseconds=rng.randrange(10**10)),
    )


async def consume_all(consumer: BaseEventConsumer, expected: int, timeout: float = 60.0) -> list[tuple[dict, Any]]:
    seen: list[tuple[dict, Any]] = []

    async def collect(event: dict[str, Any], record: ConsumedRecord) -> None:
        seen.append((event, record))

    deadline = time.monotonic() + timeout
    while len(seen) < expected and time.monotonic() < deadline:
        await consumer.consume(collect, max_messages=expected - len(seen), timeout=1.0)
    return seen


@pytest.mark.asyncio
@pytest.mark.parametrize("registry", [False, True], ids=["single-object", "confluent"])
async def test_ten_thousand_events_round_trip_exactly(
    registry: bool, kafka_bootstrap: str, event_topic: Callable[..., str], new_group: Callable[[str], str]
) -> None:
    config = KafkaConfig(
        bootstrap_servers=kafka_bootstrap,
        schema_registry_url=f"mock://roundtrip-{uuid.uuid4().hex[:8]}" if registry else None,
    )
    topic = event_topic(3)
    rng = random.Random(7)
    sent = [random_inspection(rng, i) for i in range(10_000)]
    async with InspectionEventProducer(config, topic=topic) as producer:
        reports = await producer.publish_batch(sent)
        assert producer.get_metrics()["messages_sent"] == 10_000
    assert len(reports) == 10_000 and {r.topic for r in reports} == {topic}

    consumer = BaseEventConsumer([topic], new_group("roundtrip"), load_schema("inspection"), config)
    await consumer.start()
    try:
        received = await consume_all(consumer, 10_000)
    finally:
        await consumer.stop()
    by_id = {event["event_id"]: event for event, _ in received}
    assert len(received) == len(by_id) == 10_000
    for event in sent:
        assert by_id[event["event_id"]] == {**event, "recipe_id": None}
    first_raw = received[0][1].value
    assert first_raw[0] == (0 if registry else 0xC3)


@pytest.mark.asyncio
async def test_poison_records_are_dead_lettered_with_reason_and_consumption_goes_on(
    kafka_bootstrap: str, event_topic: Callable[..., str], new_group: Callable[[str], str]
) -> None:
    config = KafkaConfig(bootstrap_servers=kafka_bootstrap, schema_registry_url=f"mock://dlq-{uuid.uuid4().hex[:8]}")
    topic = event_topic(1)
    plain = AvroSerializer(load_schema("inspection"), config=KafkaConfig(bootstrap_servers=kafka_bootstrap))

    def good(inspection_id: str) -> bytes:
        event = random_inspection(random.Random(1), 1)
        event.update(inspection_id=inspection_id, event_id=str(uuid.uuid4()), recipe_id=None)
        return plain.serialize(event)

    valid = good("X")
    records = [
        ("ok-1", good("OK-1"), None),
        ("garbage", b"\xde\xad\xbe\xef not avro", "wrong magic byte 0xde"),
        ("wrong-magic", b"\x01" + valid[1:], "wrong magic byte 0x01"),
        ("unknown-fingerprint", valid[:2] + b"\x11" * 8 + valid[10:], "unknown schema fingerprint"),
        ("unknown-schema-id", b"\x00" + (424242).to_bytes(4, "big") + valid[10:], "schema id 424242"),
        ("truncated", valid[:-9], "truncated or corrupt"),
        ("handler-fails", good("FAIL"), "handler failed after 3 attempt(s): RuntimeError: inspection FAIL"),
        ("ok-2", good("OK-2"), None),
    ]
    raw_producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for key, value, _ in records:
        raw_producer.produce(topic, value=value, key=key, headers=[("origin", b"test"), ("kind", key.encode())])
    assert raw_producer.flush(10) == 0

    handled: list[str] = []
    attempts: dict[str, int] = {}

    async def handler(event: dict[str, Any], record: ConsumedRecord) -> None:
        attempts[event["inspection_id"]] = attempts.get(event["inspection_id"], 0) + 1
        if event["inspection_id"] == "FAIL":
            raise RuntimeError("inspection FAIL cannot be stored")
        handled.append(event["inspection_id"])

    group = new_group("dlq")
    consumer = BaseEventConsumer([topic], group, load_schema("inspection"), config, retry_backoff_s=0.01)
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        while consumer.get_metrics()["messages_consumed"] < len(records) and time.monotonic() < deadline:
            await consumer.consume_with_retry(handler, max_retries=2, timeout=1.0)
        metrics = consumer.get_metrics()
    finally:
        await consumer.stop()

    assert handled == ["OK-1", "OK-2"]
    assert attempts["FAIL"] == 3
    assert metrics["messages_dead_lettered"] == 6 and metrics["messages_failed"] == 6
    assert metrics["messages_processed"] == 2 and metrics["messages_consumed"] == 8

    dead = read_topic(kafka_bootstrap, dlq_topic(topic), 6)
    assert len(dead) == 6
    originals = {key: (offset, value, reason) for offset, (key, value, reason) in enumerate(records)}
    for message in dead:
        key = message.key().decode()
        offset, value, reason = originals[key]
        headers = headers_of(message)
        assert message.value() == value  # exactly the bytes that came in
        assert reason in headers["dlq.reason"]
        assert headers["origin"] == "test" and headers["kind"] == key
        assert headers["dlq.original.topic"] == topic
        assert headers["dlq.original.partition"] == "0"
        assert headers["dlq.original.offset"] == str(offset)
        assert headers["dlq.consumer.group"] == group

    # Everything was committed: the group has nothing left to read.
    again = BaseEventConsumer([topic], group, load_schema("inspection"), config)
    await again.start()
    try:
        assert await again.consume(handler, timeout=3.0) == 0
    finally:
        await again.stop()


@pytest.mark.asyncio
async def test_offsets_move_only_for_handled_records(
    kafka_bootstrap: str, event_topic: Callable[..., str], new_group: Callable[[str], str]
) -> None:
    config = KafkaConfig(bootstrap_servers=kafka_bootstrap)
    topic = event_topic(1)
    rng = random.Random(3)
    sent = [random_inspection(rng, i) for i in range(10)]
    async with InspectionEventProducer(config, topic=topic) as producer:
        await producer.publish_batch(sent)
    group = new_group("commit")
    first = BaseEventConsumer([topic], group, load_schema("inspection"), config)
    await first.start()
    seen_first = await consume_all(first, 4)
    await first.stop()  # 4 handled; the rest was polled into the buffer but never handled
    second = BaseEventConsumer([topic], group, load_schema("inspection"), config)
    await second.start()
    seen_second = await consume_all(second, 6)
    await second.stop()
    ids = [e["event_id"] for e, _ in seen_first + seen_second]
    assert ids == [e["event_id"] for e in sent]


@pytest.mark.asyncio
async def test_cancelled_consume_never_loses_or_skips_a_polled_record(
    kafka_bootstrap: str, event_topic: Callable[..., str], new_group: Callable[[str], str]
) -> None:
    config = KafkaConfig(bootstrap_servers=kafka_bootstrap)
    topic = event_topic(1)
    rng = random.Random(5)
    sent = [random_inspection(rng, i) for i in range(150)]
    async with InspectionEventProducer(config, topic=topic) as producer:
        await producer.publish_batch(sent)
    handled: list[str] = []

    async def slow_handler(event: dict[str, Any], record: ConsumedRecord) -> None:
        await asyncio.sleep(0.004)  # cancellation lands here, mid-record, most of the time
        handled.append(event["event_id"])

    group = new_group("cancel")
    consumer = BaseEventConsumer([topic], group, load_schema("inspection"), config)
    await consumer.start()
    cancellations = 0
    try:
        deadline = time.monotonic() + 60
        while len(handled) < len(sent) and time.monotonic() < deadline:
            try:
                await asyncio.wait_for(consumer.consume(handler=slow_handler), timeout=0.03)
            except TimeoutError:
                cancellations += 1
    finally:
        await consumer.stop()
    assert cancellations > 5
    assert handled == [e["event_id"] for e in sent]  # in order, none lost, none twice

    after = BaseEventConsumer([topic], group, load_schema("inspection"), config)
    await after.start()
    try:
        assert await after.consume(slow_handler, timeout=3.0) == 0
    finally:
        await after.stop()


@pytest.mark.asyncio
async def test_two_consumers_in_one_group_split_partitions_and_see_every_event_once(
    kafka_bootstrap: str, event_topic: Callable[..., str], new_group: Callable[[str], str]
) -> None:
    config = KafkaConfig(bootstrap_servers=kafka_bootstrap)
    topic = event_topic(4)
    group = new_group("split")
    consumers = [BaseEventConsumer([topic], group, load_schema("inspection"), config) for _ in range(2)]
    seen: list[list[tuple[str, int]]] = [[], []]

    def collector(index: int) -> Callable[[dict[str, Any], ConsumedRecord], Any]:
        async def collect(event: dict[str, Any], record: ConsumedRecord) -> None:
            seen[index].append((event["event_id"], record.partition))

        return collect

    for consumer in consumers:
        await consumer.start()
    try:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            await asyncio.gather(*(c.consume(collector(i), timeout=0.3) for i, c in enumerate(consumers)))
            sizes = [len(c.consumer.assignment()) for c in consumers if c.consumer]
            if sizes == [2, 2]:
                break
        assert sizes == [2, 2]

        rng = random.Random(11)
        sent = [random_inspection(rng, i) for i in range(400)]
        async with InspectionEventProducer(config, topic=topic) as producer:
            await producer.publish_batch(sent)
        while sum(map(len, seen)) < 400 and time.monotonic() < deadline + 30:
            await asyncio.gather(*(c.consume(collector(i), timeout=0.3) for i, c in enumerate(consumers)))
    finally:
        for consumer in consumers:
            await consumer.stop()
    all_ids = [event_id for part in seen for event_id, _ in part]
    assert sorted(all_ids) == sorted(e["event_id"] for e in sent)
    partitions = [{p for _, p in part} for part in seen]
    assert partitions[0] and partitions[1] and not partitions[0] & partitions[1]


@pytest.mark.asyncio
async def test_health_check_true_on_the_broker_and_false_quickly_on_a_dead_port(kafka_bootstrap: str) -> None:
    from chipq_pipelines.local_kafka import free_port

    assert await KafkaClientManager(KafkaConfig(bootstrap_servers=kafka_bootstrap)).health_check() is True
    started = time.monotonic()
    dead = KafkaClientManager(KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}"))
    assert await dead.health_check() is False
    assert time.monotonic() - started < 6


@pytest.mark.asyncio
async def test_an_invalid_event_is_rejected_before_anything_is_sent(
    kafka_bootstrap: str, event_topic: Callable[..., str]
) -> None:
    config = KafkaConfig(bootstrap_servers=kafka_bootstrap)
    topic = event_topic(1)
    async with InspectionEventProducer(config, topic=topic) as producer:
        with pytest.raises(EventValidationError) as caught:
            await producer.publish_inspection_completed("I-1", "L-1", "C-1", "visual", quality_score=float("nan"))
        assert caught.value.field == "quality_score"
        good = random_inspection(random.Random(1), 1)
        bad = {**good, "defects": [{**good["defects"][0], "severity": "FATAL"}]} if good["defects"] else None
        bad = bad or {**good, "chip_id": None}
        with pytest.raises(EventValidationError) as caught:
            await producer.publish_batch([good, bad])
        assert caught.value.field.startswith("events[1].")
        assert producer.get_metrics()["messages_sent"] == 0
    assert high_watermarks(kafka_bootstrap, topic) == {0: 0}


@pytest.mark.asyncio
async def test_correlation_id_from_argument_context_or_new_in_body_header_and_log(
    kafka_bootstrap: str, event_topic: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    config = KafkaConfig(bootstrap_servers=kafka_bootstrap)
    topic = event_topic(1)
    caplog.set_level(logging.INFO, logger="chipq.events.producer")
    async with InspectionEventProducer(config, topic=topic) as producer:
        with correlation_context("req-from-context"):
            await producer.publish_inspection_created("I-1", "L-1", "C-1", "visual")
            await producer.publish_inspection_created("I-2", "L-1", "C-1", "visual", correlation_id="req-explicit")
        report = await producer.publish_inspection_created("I-3", "L-1", "C-1", "visual")
    assert report.topic == topic and report.partition == 0 and report.offset == 2
    messages = read_topic(kafka_bootstrap, topic, 3)
    decoder = AvroSerializer(load_schema("inspection"), config=config)
    ids = [(decoder.deserialize(m.value())["correlation_id"], headers_of(m)["correlation_id"]) for m in messages]
    assert ids[0] == ("req-from-context", "req-from-context")
    assert ids[1] == ("req-explicit", "req-explicit")
    assert ids[2][0] == ids[2][1] and uuid.UUID(ids[2][0])
    assert "correlation_id=req-from-context" in caplog.text and "correlation_id=req-explicit" in caplog.text


def test_blocking_quality_producer_publishes_lot_and_day_violations_with_given_ids(
    kafka_bootstrap: str, event_topic: Callable[..., str]
) -> None:
    config = KafkaConfig(bootstrap_servers=kafka_bootstrap)
    topic = event_topic(2)
    lot_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "chipq/alert/LOT-9/defect_rate"))
    day_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "chipq/alert/2025-03-01/defect_rate"))
    with SyncQualityEventProducer(config, topic=topic) as producer:
        lot = producer.publish_threshold_violated(
            batch_id="LOT-9",
            threshold=0.05,
            observed_value=0.12,
            alert_level="CRITICAL",
            rule="defect_rate",
            defect_type="void",
            event_id=lot_id,
        )
        day = producer.publish_threshold_violated(
            scope="DAY",
            event_date="2025-03-01",
            rule="defect_rate",
            threshold=0.05,
            observed_value=0.07,
            event_id=day_id,
        )
        assert producer.get_metrics()["messages_sent"] == 2
    assert lot.topic == day.topic == topic
    decoder = AvroSerializer(load_schema("quality"), config=config)
    events = {e["event_id"]: e for e in (decoder.deserialize(m.value()) for m in read_topic(kafka_bootstrap, topic, 2))}
    assert events[lot_id]["scope"] == "LOT" and events[lot_id]["inspection_id"] is None
    assert events[lot_id]["batch_id"] == "LOT-9" and events[lot_id]["defect_type"] == "void"
    assert events[lot_id]["alert_level"] == "CRITICAL" and events[lot_id]["pass_fail"] is False
    assert events[day_id]["scope"] == "DAY" and events[day_id]["event_date"] == "2025-03-01"
    assert events[day_id]["batch_id"] is None and events[day_id]["alert_level"] == "WARNING"


def test_stop_reports_events_that_were_not_delivered() -> None:
    from chipq_pipelines.events.delivery import ProducerCore
    from chipq_pipelines.local_kafka import free_port

    core = ProducerCore(KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}"), delivery_timeout_s=60)
    core.start()
    reasons: list[str | None] = []
    core.send("nowhere", b"x", None, [], lambda reason, report: reasons.append(reason))
    assert core.stop(timeout=0.5) == 1
    assert reasons and "before Kafka acknowledged" in str(reasons[0])
    assert json.dumps(core.metrics.snapshot(0))  # metrics stay serialisable


# ---------------------------------------------------------------- missing topics


@pytest.mark.asyncio
async def test_publishing_to_a_missing_topic_fails_fast_naming_it_and_the_fix(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    """Brokers here never create topics on first use: say so at once instead of timing out after 30 s."""
    config = KafkaConfig(bootstrap_servers=kafka_bootstrap)
    topic = unique_name("not-created")
    async with InspectionEventProducer(config, topic=topic) as producer:
        started = time.monotonic()
        with pytest.raises(TopicNotFoundError) as caught:
            await producer.publish_inspection_created("INSP-1", "LOT-1", "CHIP-1", "visual")
        assert time.monotonic() - started < 5
        assert caught.value.topic == topic
        assert isinstance(caught.value, PublishError)  # callers catching PublishError see it too
        assert repr(topic) in str(caught.value) and "`chipq topics create`" in str(caught.value)
        assert producer.get_metrics()["messages_sent"] == 0

        # once the topic exists the same producer publishes (nothing stale was kept)
        ensure_topics(config, 1, topics=[topic], with_dlq=False)
        report = await producer.publish_inspection_created("INSP-1", "LOT-1", "CHIP-1", "visual")
        assert report.topic == topic

    with SyncQualityEventProducer(config, topic=unique_name("not-created")) as blocking:
        started = time.monotonic()
        with pytest.raises(TopicNotFoundError, match="chipq topics create"):
            blocking.publish_threshold_violated(batch_id="LOT-1", threshold=0.1, observed_value=0.2, rule="r")
        assert time.monotonic() - started < 5


@pytest.mark.asyncio
async def test_consumer_of_a_missing_topic_says_which_and_how_to_create_it(
    kafka_bootstrap: str, unique_name: Callable[[str], str], new_group: Callable[[str], str], caplog
) -> None:
    topic = unique_name("not-created")
    consumer = BaseEventConsumer([topic], new_group("missing"), config=KafkaConfig(bootstrap_servers=kafka_bootstrap))
    await consumer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="chipq.events.consumer"):
            deadline = time.monotonic() + 15
            while topic not in caplog.text and time.monotonic() < deadline:
                await consumer.consume(handler=lambda event, record: None, timeout=0.5)
    finally:
        await consumer.stop()
    warnings = [r.getMessage() for r in caplog.records if topic in r.getMessage()]
    assert len(warnings) == 1, warnings  # said once, not on every poll
    assert "does not exist" in warnings[0] and "chipq topics create" in warnings[0]
