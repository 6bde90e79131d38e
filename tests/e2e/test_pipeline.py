"""Kafka → Dagster → DuckDB on the real broker, compared with an independent pandas recomputation."""

from __future__ import annotations

import datetime as dt
import os
import random
import subprocess
import sys
import uuid
from typing import Any

import pandas as pd
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from chipq_pipelines.definitions import build_defs
from chipq_pipelines.events.producers import SyncInspectionEventProducer
from chipq_pipelines.runner import catch_up
from chipq_pipelines.warehouse.snapshot import query_snapshot

pytestmark = pytest.mark.e2e

SEVERITIES = ["LOW", "MEDIUM", "HIGH", "CRITICAL"]
DEFECT_TYPES = ["particle", "scratch", "edge-ring", "void"]
POISON = [b"not avro at all", b"\xc3\x01\x00\x01\x02\x03\x04\x05\x06\x07garbage", b"\x00\x00\x00\x00\x07trunc", b""]


def _event(rng: random.Random, lot: str, inspection: int, when: dt.datetime, kind: str) -> dict[str, Any]:
    completed = kind == "INSPECTION_COMPLETED"
    defects = []
    if completed:
        for _ in range(rng.choice([0, 0, 0, 1, 1, 2, 4])):
            defects.append(
                {
                    "defect_type": rng.choice(DEFECT_TYPES),
                    "severity": rng.choice(SEVERITIES),
                    "confidence": round(rng.random(), 6),
                    "location": {"x": rng.uniform(-150, 150), "y": rng.uniform(-150, 150)},
                }
            )
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "event_type": kind,
        "event_time": when,
        "inspection_id": f"{lot}/INS-{inspection}",
        "batch_id": lot,
        "chip_id": f"{lot}/W{inspection % 25:02d}/C{inspection % 7}",
        "wafer_id": f"{lot}/W{inspection % 25:02d}",
        "station_id": f"AOI-{inspection % 3}",
        "inspection_type": "optical",
        "status": "completed" if completed else "pending",
        "quality_score": round(rng.uniform(0.6, 1.0), 6) if completed else None,
        "defects": defects,
        "metadata": {"recipe": "r1"},
    }


def _messy_stream(seed: int, lots: list[str], now: dt.datetime) -> tuple[list[dict], list[dict]]:
    """Events as published (with duplicates, re-inspections, out-of-order and late events)."""
    rng = random.Random(seed)
    events: list[dict] = []
    for lot in lots:
        for inspection in range(rng.randint(15, 30)):
            when = now - dt.timedelta(hours=rng.uniform(0, 60))
            events.append(_event(rng, lot, inspection, when, "INSPECTION_CREATED"))
            events.append(_event(rng, lot, inspection, when + dt.timedelta(minutes=5), "INSPECTION_COMPLETED"))
            if rng.random() < 0.15:  # re-inspection: a later completion supersedes the first for the lot score
                events.append(_event(rng, lot, inspection, when + dt.timedelta(hours=2), "INSPECTION_COMPLETED"))
    rng.shuffle(events)  # out of order
    duplicates = [dict(e) for e in rng.sample(events, 25)]  # producer retries: same event_id again
    return events, duplicates


def _publish(env, events: list[dict]) -> None:
    with SyncInspectionEventProducer(env.kafka_config, topic=env.inspection_topic) as producer:
        producer.publish_batch(events, key_fn=lambda e: e["inspection_id"])


def _publish_poison(env, payloads: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": env.bootstrap})
    for index, payload in enumerate(payloads):
        producer.produce(env.inspection_topic, key=f"poison-{index}".encode(), value=payload)
    assert producer.flush(30) == 0


def _expected_marts(events: list[dict], pass_threshold: float = 0.85) -> tuple[pd.DataFrame, pd.DataFrame]:
    unique = {e["event_id"]: e for e in events}.values()
    completed = [e for e in unique if e["event_type"] == "INSPECTION_COMPLETED"]
    rows = [
        {
            "event_id": e["event_id"],
            "event_date": e["event_time"].astimezone(dt.UTC).date(),
            "event_time": e["event_time"],
            "lot_id": e["batch_id"],
            "inspection_id": e["inspection_id"],
            "chip_id": e["chip_id"],
            "quality_score": e["quality_score"],
        }
        for e in completed
    ]
    frame = pd.DataFrame(rows)
    defects = pd.DataFrame(
        [
            {"event_id": e["event_id"], "defect_type": d["defect_type"], "severity": d["severity"]}
            for e in completed
            for d in e["defects"]
        ]
    )
    # Daily defect rates over every completed event of the day.
    inspected = frame.groupby("event_date")["chip_id"].nunique().rename("chips_inspected")
    joined = defects.merge(frame[["event_id", "event_date", "chip_id"]], on="event_id")
    by_type = joined.groupby(["event_date", "defect_type"]).agg(
        chips_with_defect=("chip_id", "nunique"), defect_count=("event_id", "size")
    )
    rates = by_type.join(inspected, on="event_date").reset_index()
    rates["defect_rate"] = rates["chips_with_defect"] / rates["chips_inspected"]
    # Lot scores over each inspection's latest completion.
    latest = frame.sort_values("event_time").groupby(["lot_id", "inspection_id"]).tail(1)
    counts = defects.groupby("event_id").agg(
        defect_count=("defect_type", "size"), critical_defects=("severity", lambda s: int((s == "CRITICAL").sum()))
    )
    latest = latest.join(counts, on="event_id").fillna({"defect_count": 0, "critical_defects": 0})
    lots = latest.groupby("lot_id").agg(
        inspections_completed=("inspection_id", "size"),
        chips_inspected=("chip_id", "nunique"),
        mean_quality_score=("quality_score", "mean"),
        min_quality_score=("quality_score", "min"),
        passed=("quality_score", lambda s: int((s >= pass_threshold).sum())),
        defect_count=("defect_count", "sum"),
        critical_defects=("critical_defects", "sum"),
    )
    lots["pass_rate"] = lots["passed"] / lots["inspections_completed"]
    lots["defect_density"] = lots["defect_count"] / lots["chips_inspected"]
    return rates, lots.reset_index().drop(columns="passed")


def _marts(env) -> tuple[pd.DataFrame, pd.DataFrame]:
    rates = query_snapshot(
        env.snapshot,
        "SELECT event_date, defect_type, chips_inspected, chips_with_defect, defect_count, defect_rate "
        "FROM marts.defect_rates ORDER BY ALL",
    )
    lots = query_snapshot(
        env.snapshot,
        "SELECT lot_id, inspections_completed, chips_inspected, mean_quality_score, min_quality_score, "
        "pass_rate, defect_count, defect_density, critical_defects FROM marts.lot_quality_scores ORDER BY lot_id",
    )
    return rates, lots


def _assert_equal(actual: pd.DataFrame, expected: pd.DataFrame, keys: list[str]) -> None:
    actual = actual.assign(**{c: actual[c].map(lambda v: pd.Timestamp(v).date()) for c in keys if c.endswith("_date")})
    expected = expected[list(actual.columns)].sort_values(keys).reset_index(drop=True)
    actual = actual.sort_values(keys).reset_index(drop=True)
    assert len(actual) == len(expected)
    for column in actual.columns:
        left, right = actual[column].tolist(), expected[column].tolist()
        if isinstance(right[0], float):
            assert left == pytest.approx(right, rel=1e-12, abs=1e-12), column
        elif column.endswith("_date"):
            assert [pd.Timestamp(v).date() for v in left] == [pd.Timestamp(v).date() for v in right], column
        else:
            assert [str(v) for v in left] == [str(v) for v in right], column


def test_marts_equal_a_pandas_recomputation_and_catch_up_is_idempotent(pipeline_env, monkeypatch) -> None:
    monkeypatch.setenv("CHIPQ_MAX_RECORDS_PER_RUN", "120")  # several capped ingest runs, planned one after another
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    lots = ["LOT-A1", "LOT-'quoted'", "LOT/slash/ü", "LOT-B2'; DROP TABLE raw.defects; --"]
    events, duplicates = _messy_stream(7, lots, now)
    _publish(pipeline_env, events[: len(events) // 2])
    _publish_poison(pipeline_env, POISON)
    _publish(pipeline_env, events[len(events) // 2 :] + duplicates)

    report = catch_up(defs=build_defs(), echo=print)
    assert report.runs["pipeline_cycle"] >= (len(events) + len(duplicates) + len(POISON)) // 120
    assert report.duplicates_skipped == len(duplicates)
    assert report.rejected == len(POISON)
    landed = query_snapshot(
        pipeline_env.snapshot, "SELECT count(*) AS n, count(DISTINCT event_id) AS ids FROM raw.inspection_events"
    )
    assert int(landed["n"][0]) == int(landed["ids"][0]) == len(events)

    expected_rates, expected_lots = _expected_marts(events)
    actual_rates, actual_lots = _marts(pipeline_env)
    assert set(actual_lots["lot_id"]) == set(lots), "lot ids are stored verbatim"
    _assert_equal(actual_rates, expected_rates, ["event_date", "defect_type"])
    _assert_equal(actual_lots, expected_lots, ["lot_id"])

    rejected = query_snapshot(pipeline_env.snapshot, 'SELECT raw, reason FROM ops.rejected_events ORDER BY "offset"')
    assert sorted(bytes(r) for r in rejected["raw"]) == sorted(POISON)
    assert all(reason for reason in rejected["reason"])

    # Catching up again finds nothing and changes nothing.
    again = catch_up(defs=build_defs(), echo=print)
    assert again.runs == {}
    rates_after, lots_after = _marts(pipeline_env)
    pd.testing.assert_frame_equal(rates_after, actual_rates)
    pd.testing.assert_frame_equal(lots_after, actual_lots)

    # A late event re-opens only its own day and its own lot.
    rng = random.Random(99)
    late_day = now - dt.timedelta(days=5)  # a day with no other events
    late = _event(rng, "LOT-A1", 999, late_day, "INSPECTION_COMPLETED")
    _publish(pipeline_env, [late])
    late_report = catch_up(defs=build_defs(), echo=print)
    assert set(late_report.runs) == {"pipeline_cycle"}  # a second cycle lands a violation it published, if any
    assert late_report.partitions == {
        "marts/defect_rates": {late_day.date().isoformat()},
        "marts/lot_quality_scores": {"LOT-A1"},
    }
    expected_rates, expected_lots = _expected_marts([*events, late])
    actual_rates, actual_lots = _marts(pipeline_env)
    if late["defects"]:
        assert pd.Timestamp(late_day.date()) in set(actual_rates["event_date"])
    _assert_equal(actual_rates, expected_rates, ["event_date", "defect_type"])
    _assert_equal(actual_lots, expected_lots, ["lot_id"])


def test_ingest_killed_between_landing_and_committing_loses_and_duplicates_nothing(pipeline_env) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    events, _ = _messy_stream(11, ["LOT-K1", "LOT-K2"], now)
    _publish(pipeline_env, events)

    crashed = subprocess.run(
        [sys.executable, "-m", "chipq_pipelines.cli", "catch-up"],
        env={**os.environ, **pipeline_env.env, "CHIPQ_FAULT_INJECT": "after_landing"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert crashed.returncode == 137, crashed.stderr[-2000:]

    # More events arrive while the pipeline is down.
    more, _ = _messy_stream(12, ["LOT-K3"], now)
    _publish(pipeline_env, more)
    catch_up(defs=build_defs(), echo=print)

    counts = query_snapshot(
        pipeline_env.snapshot,
        "SELECT count(*) AS n, count(DISTINCT event_id) AS distinct_ids FROM raw.inspection_events",
    )
    assert int(counts["n"][0]) == int(counts["distinct_ids"][0]) == len(events) + len(more)
    _, expected_lots = _expected_marts([*events, *more])
    _, actual_lots = _marts(pipeline_env)
    _assert_equal(actual_lots, expected_lots, ["lot_id"])


def test_a_deleted_warehouse_is_rebuilt_from_kafka(pipeline_env) -> None:
    """The group's committed offsets only mirror the warehouse: without the file, everything is re-read."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    events, _ = _messy_stream(21, ["LOT-R1", "LOT-R2"], now)
    _publish(pipeline_env, events)
    catch_up(defs=build_defs(), echo=print)
    before = _marts(pipeline_env)

    pipeline_env.warehouse.unlink()  # an operator starts the warehouse over; broker and group stay
    pipeline_env.snapshot.unlink()
    rebuilt = catch_up(defs=build_defs(), echo=print)

    assert rebuilt.runs.get("pipeline_cycle", 0) >= 1, rebuilt
    counts = query_snapshot(
        pipeline_env.snapshot, "SELECT count(*) AS n, count(DISTINCT event_id) AS ids FROM raw.inspection_events"
    )
    assert int(counts["n"][0]) == int(counts["ids"][0]) == len(events)
    after = _marts(pipeline_env)
    pd.testing.assert_frame_equal(after[0], before[0])
    pd.testing.assert_frame_equal(after[1], before[1])


def test_parallel_decode_lands_chunks_in_order_exactly_once(pipeline_env, monkeypatch) -> None:
    """Worker processes decode; chunks bounded by bytes land in order; raw and marts are exact."""
    from chipq_pipelines.ingest import decode
    from chipq_pipelines.ingest.reader import ingest_ranges
    from chipq_pipelines.warehouse import connect, ensure_schema, rewrite_all_marts

    monkeypatch.setattr(decode, "PARALLEL_MIN_RECORDS", 0)
    monkeypatch.setenv(decode.WORKERS_ENV, "2")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    events, duplicates = _messy_stream(11, [f"LOT-P{i}" for i in range(12)], now)
    _publish(pipeline_env, events[:300])
    _publish_poison(pipeline_env, POISON)
    _publish(pipeline_env, events[300:] + duplicates)
    total = len(events) + len(duplicates) + len(POISON)
    with connect(pipeline_env.home / "parallel.duckdb") as conn:
        ensure_schema(conn)
        consumer = Consumer({"bootstrap.servers": pipeline_env.bootstrap, "group.id": "watermarks"})
        planned = {
            p: (0, consumer.get_watermark_offsets(TopicPartition(pipeline_env.inspection_topic, p), timeout=10)[1])
            for p in range(3)
        }
        consumer.close()
        assert sum(end for _, end in planned.values()) == total
        # ~300-byte events: the byte bound (16 kB) closes chunks long before the record bound (10,000)
        summary = ingest_ranges(
            pipeline_env.kafka_config, conn, pipeline_env.inspection_topic, planned, chunk_bytes=16_000
        )
        assert summary.records == total
        assert summary.chunks >= total * 250 // 16_000
        assert summary.inserted == len(events)
        assert summary.duplicates == len(duplicates)
        assert summary.rejected == len(POISON)
        ids = conn.execute("SELECT count(*), count(DISTINCT event_id) FROM raw.inspection_events").fetchall()
        assert ids == [(len(events), len(events))]
        assert conn.execute("SELECT sum(next_offset) FROM ops.ingested_offsets").fetchall() == [(total,)]
        rewrite_all_marts(conn)
        rates = conn.execute(
            "SELECT event_date, defect_type, chips_inspected, chips_with_defect, defect_count, defect_rate "
            "FROM marts.defect_rates ORDER BY ALL"
        ).df()
        lots = conn.execute(
            "SELECT lot_id, inspections_completed, chips_inspected, mean_quality_score, min_quality_score, "
            "defect_count, critical_defects, pass_rate, defect_density FROM marts.lot_quality_scores"
        ).df()
    expected_rates, expected_lots = _expected_marts(events)
    _assert_equal(rates, expected_rates, ["event_date", "defect_type"])
    _assert_equal(lots, expected_lots, ["lot_id"])


def test_a_failing_ingest_worker_fails_the_run_after_landing_what_came_before(pipeline_env, monkeypatch) -> None:
    """A worker's error reaches the run; the chunks landed before it stay landed with their offsets."""
    from chipq_pipelines.ingest import decode
    from chipq_pipelines.ingest.reader import ingest_ranges
    from chipq_pipelines.warehouse import connect, ensure_schema

    monkeypatch.setattr(decode, "PARALLEL_MIN_RECORDS", 0)
    monkeypatch.setenv(decode.WORKERS_ENV, "3")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    events, _ = _messy_stream(5, ["LOT-F1", "LOT-F2"], now)
    _publish(pipeline_env, events)
    consumer = Consumer({"bootstrap.servers": pipeline_env.bootstrap, "group.id": "watermarks"})
    high = {
        p: consumer.get_watermark_offsets(TopicPartition(pipeline_env.inspection_topic, p), timeout=10)[1]
        for p in range(3)
    }
    consumer.close()
    # partition 0 is planned 5 offsets past its end: its worker waits for them, then gives up
    planned = {p: (0, end + (5 if p == 0 else 0)) for p, end in high.items()}
    with connect(pipeline_env.home / "failing.duckdb") as conn:
        ensure_schema(conn)
        with pytest.raises(decode.RangeReadError, match="no records"):
            ingest_ranges(
                pipeline_env.kafka_config,
                conn,
                pipeline_env.inspection_topic,
                planned,
                stall_timeout_s=3,
                chunk_size=20,
            )
        landed = dict(conn.execute("SELECT partition, next_offset FROM ops.ingested_offsets").fetchall())
        rows = conn.execute("SELECT count(*) FROM raw.inspection_events").fetchall()[0][0]
    # every landed offset is backed by its rows (one row per offset here: no duplicates, no poison)
    assert rows == sum(landed.values()) > 0
    assert all(landed[p] <= high[p] for p in landed)
