"""Publishing the alert outbox: THRESHOLD_VIOLATED and THRESHOLD_CLEARED on the quality topic.

No Dagster here (the asset calls it inside the ``duckdb_writer`` slot). Before sending,
chipq's own events already landed from the quality topic mark their outbox rows published
(``lifecycle.import_from_topic``), and nothing is sent while the topic is not landed up to
its fence (``fence.TopicFence``): an event already on the topic is never published again,
even after a crash between send and mark or in a warehouse rebuilt from Kafka. Sending
marks only acknowledged rows.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pandas as pd

from chipq_pipelines.alerts.fence import TopicFence
from chipq_pipelines.alerts.lifecycle import CLEARED, SOURCE, import_from_topic
from chipq_pipelines.alerts.outbox import next_change_seq, records
from chipq_pipelines.alerts.sql import load as _sql
from chipq_pipelines.events import builders
from chipq_pipelines.events.delivery import DeliveryReport
from chipq_pipelines.ingest.reader import FAULT_ENV
from chipq_pipelines.warehouse.schema import transaction

log = logging.getLogger(__name__)

#: Rules that judge a quality score: their events also carry it as quality_score.
SCORE_RULES = {"lot_mean_score", "spc_we1_beyond_3sigma", "spc_we2_2of3_beyond_2sigma"}
SCORE_RULES |= {"spc_we3_4of5_beyond_1sigma", "spc_we4_8_in_a_row"}
PUBLISH_BATCH = 500


@dataclass
class Publication:
    """What one publish run did."""

    sent: int = 0
    acknowledged: int = 0
    resent: int = 0
    #: outbox rows marked published because their event was found on the quality topic
    found_on_topic: int = 0
    #: why nothing was sent (partitions not landed up to the fence); empty when not deferred
    deferred: list[str] = field(default_factory=list)
    published: list[dict[str, Any]] = field(default_factory=list)


def _fault(point: str) -> None:
    # Same switch as the ingest reader: the reliability tests kill the process here.
    if os.environ.get(FAULT_ENV) == point:
        log.error("fault injection: exiting hard at %s", point)
        os._exit(137)


def alert_event(row: dict[str, Any]) -> dict[str, Any]:
    """The complete THRESHOLD_VIOLATED or THRESHOLD_CLEARED event of an outbox row (same row, same event)."""
    lot_scope = row["scope"] == "LOT"
    cleared = row.get("event_type") == CLEARED
    observed = float(row["observed_value"])
    return builders.quality_event(
        CLEARED if cleared else "THRESHOLD_VIOLATED",
        event_id=row["event_id"],
        event_time=row["detected_at"],
        correlation_id=f"chipq-alert-{row['event_id']}",
        scope=row["scope"],
        inspection_id=None,
        batch_id=row["lot_id"] if lot_scope else None,
        event_date=None if lot_scope else row["event_date"],
        defect_type=row["defect_type"],
        rule=row["rule"],
        threshold=float(row["threshold"]),
        observed_value=observed,
        quality_score=observed if row["rule"] in SCORE_RULES else None,
        pass_fail=cleared,
        alert_level=row["alert_level"],
        metadata={
            "rules_version": row["rules_version"],
            "message": row["message"],
            "source": SOURCE,
            "episode": str(row.get("episode") or 1),
        },
    )


#: The name earlier code and tests use.
threshold_violated_event = alert_event


def publish_outbox(
    conn: duckdb.DuckDBPyConnection,
    publish_batch: Callable[[list[dict[str, Any]]], list[DeliveryReport]],
    *,
    fence: TopicFence | None = None,
    batch_size: int = PUBLISH_BATCH,
) -> Publication:
    """Send every unpublished outbox row not already on the quality topic; mark a row once Kafka acknowledged it.

    ``publish_batch`` is ``SyncQualityEventProducer.publish_batch`` (blocking until
    every event is acknowledged; ``PublishError`` when any is not). Unacknowledged
    rows stay unpublished; the next run finds them on the topic once landed, or sends
    them again under the same ids. Without ``fence`` (tests that own the topic) the
    landed quality events are still consulted, but nothing waits for landing.
    """
    publication = Publication()
    with transaction(conn):
        publication.found_on_topic = import_from_topic(conn, next_change_seq(conn))
        if fence is not None:
            publication.deferred = fence.before_publishing(conn)
    if publication.deferred:
        log.warning("alerts not published yet, the quality topic is not landed up to its fence: %s",
                    "; ".join(publication.deferred))  # fmt: skip
        return publication
    while True:
        rows = records(conn, "outbox_unpublished", {"limit": batch_size})
        if not rows:
            return publication
        sending = pd.DataFrame({"event_id": [r["event_id"] for r in rows]})
        change_seq = next_change_seq(conn)
        conn.register("sending", sending)
        try:
            conn.execute(_sql("outbox_count_attempt"), {"change_seq": change_seq})
        finally:
            conn.unregister("sending")
        publication.sent += len(rows)
        publication.resent += sum(1 for r in rows if r["publish_attempts"] > 0)
        events = [alert_event(r) for r in rows]
        # All or nothing per batch: on a PublishError nothing is marked, the run fails and the
        # next run finds the acknowledged ones on the topic (once landed) and sends the rest.
        reports = publish_batch(events)
        _fault("alerts_after_send")
        acked = list(zip(rows, reports, strict=True))
        _mark(conn, acked)
        publication.acknowledged += len(acked)
        publication.published += [_published_row(row, report) for row, report in acked]


def _mark(conn: duckdb.DuckDBPyConnection, acked: list[tuple[dict[str, Any], DeliveryReport]]) -> None:
    if not acked:
        return
    now = dt.datetime.now(dt.UTC)
    frame = pd.DataFrame(
        {
            "event_id": [row["event_id"] for row, _ in acked],
            "published_at": [now] * len(acked),
            "kafka_partition": [report.partition for _, report in acked],
            "kafka_offset": [report.offset for _, report in acked],
        }
    )
    change_seq = next_change_seq(conn)
    conn.register("acked", frame)
    try:
        conn.execute(_sql("outbox_mark_published"), {"change_seq": change_seq})
    finally:
        conn.unregister("acked")


def _published_row(row: dict[str, Any], report: DeliveryReport) -> dict[str, Any]:
    subject = (
        row["lot_id"]
        if row["scope"] == "LOT"
        else f"{row['event_date']}" + (f" / {row['defect_type']}" if row["defect_type"] else "")
    )
    return {
        "event": "cleared" if row.get("event_type") == CLEARED else "violated",
        "rule": row["rule"],
        "level": row["alert_level"],
        "scope": row["scope"],
        "subject": subject,
        "episode": row.get("episode", 1),
        "observed": row["observed_value"],
        "limit": row["threshold"],
        "event_id": row["event_id"],
        "partition": report.partition,
        "offset": report.offset,
    }
