"""Throughput of the events library vs a bare confluent-kafka + fastavro loop, same broker, same run.

    .venv/bin/python benchmarks/events_bench.py --events 50000
    .venv/bin/python benchmarks/events_bench.py --events 50000 --bootstrap 127.0.0.1:9092

Without ``--bootstrap`` a local broker is started (like the tests do) and
stopped afterwards. Each side gets its own fresh topic with the same
partition count; "produce" includes validation and encoding, "consume"
includes decoding (and, for the library, handler dispatch and commits).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from chipq_pipelines.events import builders
from chipq_pipelines.events.base_consumer import BaseEventConsumer, ConsumedRecord
from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.producers import InspectionEventProducer
from chipq_pipelines.events.schemas import default_catalog, load_schema
from chipq_pipelines.events.topics import dlq_topic

PRODUCER_CONF = {"enable.idempotence": True, "acks": "all", "compression.type": "lz4", "linger.ms": 5}


def make_events(count: int) -> list[dict[str, Any]]:
    rng = random.Random(42)
    return [
        builders.inspection_event(
            "INSPECTION_COMPLETED",
            inspection_id=f"INSP-{i:07d}",
            batch_id=f"LOT-{rng.randrange(200):04d}",
            chip_id=f"CHIP-{rng.randrange(10**6)}",
            inspection_type="visual",
            status="completed",
            quality_score=rng.random(),
            defects=[
                {
                    "defect_type": "void",
                    "severity": "HIGH",
                    "confidence": rng.random(),
                    "location": {"x": 1.0, "y": 2.0},
                }
                for _ in range(rng.randrange(3))
            ],
            metadata={"station": f"ST-{rng.randrange(9)}"},
        )
        for i in range(count)
    ]


def create_topic(bootstrap: str, partitions: int) -> str:
    name = f"bench-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, partitions, 1), NewTopic(dlq_topic(name), 1, 1)])
    for future in futures.values():
        future.result(timeout=30)
    time.sleep(1.0)  # let partition leaders settle
    return name


# ------------------------------------------------------------------ bare baseline


def bare_produce(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> float:
    known = default_catalog().get("inspection")
    parsed = parse_schema(load_schema("inspection"))
    header = b"\xc3\x01" + known.fingerprint
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_CONF})
    started = time.perf_counter()
    for event in events:
        buffer = io.BytesIO()
        buffer.write(header)
        schemaless_writer(buffer, parsed, event)
        while True:
            try:
                producer.produce(topic, buffer.getvalue(), key=event["inspection_id"])
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    assert producer.flush(60) == 0
    return time.perf_counter() - started


def bare_consume(bootstrap: str, topic: str, count: int) -> float:
    parsed = parse_schema(load_schema("inspection"))
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-bare-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen = 0
    started = time.perf_counter()
    while seen < count:
        for message in consumer.consume(500, 0.1):
            if message.error() is None:
                value = message.value()
                schemaless_reader(io.BytesIO(value[10:]), parsed)
                seen += 1
    consumer.commit(asynchronous=False)
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed


# ------------------------------------------------------------------ library


async def library_produce(config: KafkaConfig, topic: str, events: list[dict[str, Any]]) -> float:
    async with InspectionEventProducer(config, topic=topic) as producer:
        started = time.perf_counter()
        for start in range(0, len(events), 5000):
            await producer.publish_batch(events[start : start + 5000])
        return time.perf_counter() - started


async def library_consume(config: KafkaConfig, topic: str, count: int) -> float:
    consumer = BaseEventConsumer([topic], f"bench-lib-{uuid.uuid4().hex[:8]}", load_schema("inspection"), config)
    handled = 0

    async def handler(event: dict[str, Any], record: ConsumedRecord) -> None:
        nonlocal handled
        handled += 1

    await consumer.start()
    started = time.perf_counter()
    while handled < count:
        await consumer.consume(handler, max_messages=count - handled, timeout=5)
    elapsed = time.perf_counter() - started
    await consumer.stop()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--bootstrap", help="an existing broker; default: start a local one")
    args = parser.parse_args()

    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        from chipq_pipelines.local_kafka import LocalKafka, free_port
        from chipq_pipelines.paths import ChipqHome

        broker = LocalKafka(
            port=free_port(),
            instance_dir=Path(tempfile.mkdtemp(prefix="chipq-bench-kafka-")),
            lib_dir=ChipqHome.from_env().kafka_lib,
        )
        broker.start()
        bootstrap = broker.bootstrap
    try:
        config = KafkaConfig(bootstrap_servers=bootstrap)
        events = make_events(args.events)
        n = args.events
        bare_topic, lib_topic = create_topic(bootstrap, args.partitions), create_topic(bootstrap, args.partitions)
        bare_p = bare_produce(bootstrap, bare_topic, events)
        lib_p = asyncio.run(library_produce(config, lib_topic, events))
        bare_c = bare_consume(bootstrap, bare_topic, n)
        lib_c = asyncio.run(library_consume(config, lib_topic, n))
        print(f"broker {bootstrap}, {n} events, {args.partitions} partitions, avg value ~{_avg_size(events)} B")
        print(f"{'':24}{'library':>12}{'bare':>12}{'ratio':>8}")
        for label, lib, bare in (("produce events/s", lib_p, bare_p), ("consume+decode events/s", lib_c, bare_c)):
            print(f"{label:24}{n / lib:>12,.0f}{n / bare:>12,.0f}{bare / lib:>8.2f}")
    finally:
        if broker is not None:
            broker.stop()


def _avg_size(events: list[dict[str, Any]]) -> int:
    parsed = parse_schema(load_schema("inspection"))
    sample = events[:200]
    total = 0
    for event in sample:
        buffer = io.BytesIO()
        schemaless_writer(buffer, parsed, event)
        total += len(buffer.getvalue()) + 10
    return total // len(sample)


if __name__ == "__main__":
    main()
