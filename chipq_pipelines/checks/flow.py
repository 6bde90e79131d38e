"""End-to-end measurements: canary latency, Kafka offsets vs landed offsets, raw vs mart counts.

No Dagster here; the asset checks in ``checks.py`` turn these into results.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import duckdb
from confluent_kafka import Consumer, TopicPartition

from chipq_pipelines.checks.quality import RECENT_DAYS, lot_scope
from chipq_pipelines.checks.sql import load as _sql
from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.producers import SyncInspectionEventProducer
from chipq_pipelines.ingest.failover import committed_offsets, watermark_offsets
from chipq_pipelines.ingest.reader import PIPELINE_GROUP
from chipq_pipelines.warehouse.columns import CANARY_LOT_ID, CANARY_METADATA_KEY
from chipq_pipelines.warehouse.landing import landed_offsets

CALL_TIMEOUT_S = 5.0


# ---------------------------------------------------------------- canary


def publish_canary(kafka: KafkaConfig, topic: str, conn: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    """Publish one marked canary INSPECTION_COMPLETED and record it in ``ops.canaries``."""
    inspection_id = f"canary-{uuid.uuid4()}"
    event_id = str(uuid.uuid4())
    with SyncInspectionEventProducer(kafka, topic=topic) as producer:
        report = producer.publish_inspection_completed(
            inspection_id=inspection_id,
            batch_id=CANARY_LOT_ID,
            chip_id="canary",
            inspection_type="canary",
            quality_score=1.0,
            metadata={CANARY_METADATA_KEY: "true"},
            event_id=event_id,
        )
    published_at = dt.datetime.now(dt.UTC)
    record = {
        "event_id": event_id,
        "inspection_id": inspection_id,
        "published_at": published_at,
        "kafka_partition": report.partition,
        "kafka_offset": report.offset,
        "run_id": run_id,
    }
    conn.execute(_sql("canary_insert"), record)
    return record


@dataclass(frozen=True)
class CanaryVerdict:
    passed: bool
    status: str
    detail: dict[str, Any]


def canary_days(published: list[dt.datetime]) -> list[dt.date]:
    """The UTC days the canaries published at ``published`` have their event times on.

    A canary's event_time is stamped when it is built, just before it is sent; its
    ``published_at`` when Kafka acknowledged it: the same day, or the day before
    when the send crossed midnight.
    """
    days = {moment.astimezone(dt.UTC).date() - dt.timedelta(days=back) for moment in published for back in (0, 1)}
    return sorted(days)


def judge_canaries(conn: duckdb.DuckDBPyConnection, run_id: str, sla_seconds: float) -> CanaryVerdict:
    """Verdict on the newest canary published by an earlier run: landed in raw within the SLA, kept out of marts.

    Raw is read only on the days of the canaries judged (``canary_days``), not all history.
    """
    judged = conn.execute(_sql("canaries_to_judge"), {"run_id": run_id}).fetchall()
    days = canary_days([published_at for _, published_at in judged])
    relation = conn.execute(_sql("canaries_judged"), {"run_id": run_id, "days": days})
    columns = [d[0] for d in relation.description or []]
    rows = [dict(zip(columns, row, strict=True)) for row in relation.fetchall()]
    if not rows:
        return CanaryVerdict(True, "no earlier canary: the one published now is verified next time", {})
    newest = rows[0]
    detail = {
        "canary_event_id": newest["event_id"],
        "published_at": newest["published_at"].isoformat(),
        "sla_seconds": sla_seconds,
        "age_seconds": round(float(newest["age_seconds"]), 3),
        "scope": f"the {len(rows)} newest earlier canaries; raw read on {', '.join(map(str, days))}",
    }
    if any(row["in_marts"] for row in rows):
        return CanaryVerdict(False, "a canary reached a mart row (canaries must be excluded from marts)", detail)
    if newest["ingested_at"] is None:
        if newest["age_seconds"] > sla_seconds:
            return CanaryVerdict(
                False, f"canary not landed after {newest['age_seconds']:.0f} s (SLA {sla_seconds:g} s)", detail
            )
        return CanaryVerdict(True, "canary still in flight, within the SLA", detail)
    latency = float(newest["latency_seconds"])
    detail["landed_at"] = newest["ingested_at"].isoformat()
    detail["latency_seconds"] = round(latency, 3)
    if latency > sla_seconds:
        return CanaryVerdict(False, f"canary landed after {latency:.1f} s, beyond the SLA of {sla_seconds:g} s", detail)
    return CanaryVerdict(True, f"canary landed in raw after {latency:.1f} s and is excluded from marts", detail)


# ---------------------------------------------------------------- reconciliation


#: Verdicts of ``kafka_offsets`` that mean data is lost or stuck (the rest: "ok", or the group mirror behind).
LOSS_VERDICTS = ("landed beyond the high watermark", "stalled", "records deleted before landing")
GROUP_BEHIND = "group behind the warehouse (offset commits failing?)"


def unacknowledged_gaps(conn: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Rows of ``ops.offset_gaps`` nobody has acknowledged yet."""
    relation = conn.execute(_sql("offset_gaps_unacknowledged"))
    columns = [d[0] for d in relation.description or []]
    return [dict(zip(columns, row, strict=True)) for row in relation.fetchall()]


def kafka_offsets(
    kafka: KafkaConfig,
    conn: duckdb.DuckDBPyConnection,
    topics: list[str],
    max_stall_seconds: float,
    group_id: str = PIPELINE_GROUP,
    gaps: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Per topic partition: watermarks, landed offset, the group's offset, lag, unacknowledged gaps, verdict.

    Verdicts: ``ok``; ``records deleted before landing`` (an unacknowledged row in
    ``ops.offset_gaps``, or records below the low watermark not landed yet: the next ingest
    records them as a gap); ``stalled``; ``landed beyond the high watermark``; and
    ``GROUP_BEHIND`` when the ``chipq-dagster`` group's committed offset is below the landed
    one (nothing lost: the planner plans from the landed offsets, but lag tools see a false lag).
    ``gaps``: the caller's ``unacknowledged_gaps(conn)``, when it has read them already.
    """
    consumer = Consumer(kafka.librdkafka_config(**{"group.id": group_id, "enable.auto.commit": False, "log_level": 3}))
    now_ms = dt.datetime.now(dt.UTC).timestamp() * 1000
    gap_records: dict[tuple[str, int], int] = {}
    for gap in unacknowledged_gaps(conn) if gaps is None else gaps:
        key = (gap["topic"], gap["partition"])
        gap_records[key] = gap_records.get(key, 0) + int(gap["records"])
    rows = []
    try:
        for topic in topics:
            landed = landed_offsets(conn, topic)
            info = consumer.list_topics(topic, timeout=CALL_TIMEOUT_S).topics.get(topic)
            partitions = sorted(info.partitions) if info is not None and info.error is None else []
            # both through a leader or coordinator change: one broker of a cluster dying is not a failed check
            committed = {
                tp.partition: tp.offset
                for tp in committed_offsets(consumer, [TopicPartition(topic, p) for p in partitions])
            }
            for partition in partitions:
                low, high = watermark_offsets(consumer, topic, partition)
                next_offset = landed.get(partition)
                position = max(next_offset if next_offset is not None else low, low)
                lag = max(high - position, 0)
                age = _record_age_seconds(consumer, topic, partition, position, now_ms) if lag else None
                unacknowledged = gap_records.get((topic, partition), 0)
                group_offset = committed.get(partition, -1)
                if unacknowledged or (next_offset is not None and next_offset < low):
                    verdict = "records deleted before landing"
                elif (next_offset or 0) > high:
                    verdict = "landed beyond the high watermark"
                elif lag and (age is None or age > max_stall_seconds):
                    verdict = "stalled"
                elif next_offset is not None and group_offset < next_offset:
                    verdict = GROUP_BEHIND
                else:
                    verdict = "ok"
                rows.append(
                    {
                        "topic": topic,
                        "partition": partition,
                        "low_watermark": low,
                        "high_watermark": high,
                        "landed_offset": next_offset,
                        "group_offset": group_offset if group_offset >= 0 else None,
                        "lag": lag,
                        "oldest_unlanded_age_s": None if age is None else round(age, 1),
                        "unacknowledged_gap_records": unacknowledged,
                        "verdict": verdict,
                    }
                )
    finally:
        consumer.close()
    return rows


def _record_age_seconds(consumer: Consumer, topic: str, partition: int, offset: int, now_ms: float) -> float | None:
    consumer.assign([TopicPartition(topic, partition, offset)])
    try:
        messages = consumer.consume(num_messages=1, timeout=CALL_TIMEOUT_S)
    finally:
        consumer.unassign()
    for message in messages:
        if message.error() is None:
            _, timestamp_ms = message.timestamp()
            return max(0.0, (now_ms - timestamp_ms) / 1000) if timestamp_ms > 0 else None
    return None


def raw_vs_lot_mart(
    conn: duckdb.DuckDBPyConnection, settle_seconds: float, recent_days: int = RECENT_DAYS
) -> dict[str, Any]:
    """Completed inspections in raw vs ``inspections_completed`` summed over lots, settled lots only.

    Over the recent window: the lots with rows on the UTC days from today - ``recent_days``
    on, each read on all of its days (``quality.lot_scope``); ``scope`` says which.
    """
    scope = lot_scope(conn, None, recent_days)
    params = {"settle_seconds": settle_seconds, "lots": list(scope.lot_ids or ()), "days": list(scope.days)}
    relation = conn.execute(_sql("raw_vs_lot_mart"), params)
    columns = [d[0] for d in relation.description or []]
    lots = [dict(zip(columns, row, strict=True)) for row in relation.fetchall()]
    settled = [lot for lot in lots if not lot["in_flight"]]
    mismatched = [lot for lot in settled if lot["raw_inspections"] != lot["mart_inspections"]]
    return {
        "lots_compared": len(settled),
        "lots_in_flight": len(lots) - len(settled),
        "raw_completed_events": sum(int(lot["raw_completed_events"]) for lot in settled),
        "raw_completed_inspections": sum(int(lot["raw_inspections"]) for lot in settled),
        "mart_inspections_completed": sum(int(lot["mart_inspections"]) for lot in settled),
        "lots_mismatched": len(mismatched),
        "examples": [{k: lot[k] for k in ("lot_id", "raw_inspections", "mart_inspections")} for lot in mismatched[:5]],
        "scope": scope.label,
    }
