"""Threshold violations on the real broker: lots built to violate (or not) each shipped rule
→ exactly the expected THRESHOLD_VIOLATED events, also after re-running and after a crash
between send and mark.

The rules are the shipped file with its SPC baseline pinned (mu 0.95, sigma 0.01,
u_bar 0.1, p_bar 0.05), so every limit below is known: WE zones 0.94 / 0.93 / 0.92, WE4 runs
below 0.945 (mu - 0.5 sigma); probability limits (rules v2, sigma_z 1 when pinned): u-chart
UCL(20 chips) = 7 defects (0.35), UCL(100) = 21 (0.21), p-chart UCL(20) = 5 failing (0.25).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from chipq_pipelines.alerts.listing import recent_alerts
from chipq_pipelines.definitions import build_defs
from chipq_pipelines.defs.partitions import lot_partition_key
from chipq_pipelines.events.producers import SyncInspectionEventProducer
from chipq_pipelines.events.serialization import latest_reader_decoder
from chipq_pipelines.rules.loader import shipped_rules_text
from chipq_pipelines.runner import CatchUpReport, catch_up
from chipq_pipelines.warehouse.snapshot import query_snapshot

pytestmark = pytest.mark.e2e

PINNED_BASELINE = "  baseline: {mean_score: 0.95, sigma_score: 0.01, u_bar: 0.1, p_bar: 0.05}\n"


class Fab:
    """Builds lots in time order: one INSPECTION_COMPLETED per chip."""

    def __init__(self, prefix: str, day0: dt.datetime) -> None:
        self.prefix = prefix
        self.day0 = day0
        self.clock = day0 + dt.timedelta(hours=1)
        self.events: list[dict[str, Any]] = []
        self.names: dict[str, str] = {}

    def lot(self, name: str, scores: list[float], defects: dict[int, list[tuple[str, str]]] | None = None) -> str:
        lot_id = f"{self.prefix}-{name}"
        self.names[name] = lot_id
        for chip, score in enumerate(scores):
            self.events.append(
                {
                    "event_id": str(uuid.uuid4()),
                    "event_type": "INSPECTION_COMPLETED",
                    "event_time": self.clock + dt.timedelta(seconds=chip),
                    "inspection_id": f"{lot_id}/I{chip}",
                    "batch_id": lot_id,
                    "chip_id": f"{lot_id}/C{chip}",
                    "inspection_type": "optical",
                    "status": "completed",
                    "quality_score": score,
                    "defects": [
                        {"defect_type": kind, "severity": severity, "confidence": 0.9, "location": {"x": 1.0, "y": 2.0}}
                        for kind, severity in (defects or {}).get(chip, [])
                    ],
                    "metadata": {},
                }
            )
        self.clock += dt.timedelta(minutes=5)
        return lot_id

    def fillers(self, count: int = 2) -> None:
        for _ in range(count):
            self.lot(f"ok{len(self.names)}", [0.95] * 20)

    def next_day(self) -> dt.date:
        self.day0 += dt.timedelta(days=1)
        self.clock = self.day0 + dt.timedelta(hours=1)
        return self.day0.date()


def _build(prefix: str) -> tuple[Fab, set[tuple[str, str, str, str]]]:
    day0 = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0) - dt.timedelta(days=6)
    fab = Fab(prefix, day0)
    low = [("particle", "LOW")]
    expected: set[tuple[str, str, str, str]] = set()

    def lot_alerts(name: str, *alerts: tuple[str, str]) -> None:
        expected.update((rule, "LOT", fab.names[name], level) for rule, level in alerts)

    fab.fillers(3)
    fab.lot("MEANW", [0.86] * 18 + [0.66] * 2)  # mean 0.84, pass rate 0.9 (not below), p 0.1
    lot_alerts("MEANW", ("lot_mean_score", "WARNING"), ("spc_we1_beyond_3sigma", "WARNING"))
    fab.fillers()
    fab.lot("MEANC", [0.65] * 20)
    lot_alerts(
        "MEANC",
        ("lot_mean_score", "CRITICAL"),
        ("lot_pass_rate", "CRITICAL"),
        ("spc_we1_beyond_3sigma", "WARNING"),
        ("spc_p_chart_failing_fraction", "WARNING"),
    )
    fab.fillers()
    fab.lot("PASSW", [1.0] * 17 + [0.8] * 3)  # pass rate 0.85, p 0.15 < 0.25
    lot_alerts("PASSW", ("lot_pass_rate", "WARNING"))
    fab.fillers()
    fab.lot("PASSC", [1.0] * 14 + [0.84] * 6)  # pass rate 0.7, p 0.3 > 0.25
    lot_alerts("PASSC", ("lot_pass_rate", "CRITICAL"), ("spc_p_chart_failing_fraction", "WARNING"))
    fab.fillers()
    fab.lot("DENSW", [0.95] * 20, {chip: low for chip in range(12)})  # 0.6 defects per chip
    lot_alerts("DENSW", ("lot_defect_density", "WARNING"), ("spc_u_chart_defects_per_chip", "WARNING"))
    fab.fillers()
    fab.lot("DENSC", [0.95] * 20, {chip: [("residue", "LOW")] * (2 if chip < 10 else 1) for chip in range(20)})
    lot_alerts("DENSC", ("lot_defect_density", "CRITICAL"), ("spc_u_chart_defects_per_chip", "WARNING"))
    fab.fillers()
    fab.lot("CRITW", [0.95] * 20, {0: [("void", "CRITICAL")]})
    lot_alerts("CRITW", ("lot_critical_defects", "WARNING"))
    fab.fillers()
    fab.lot("CRITC", [0.95] * 20, {chip: [("void", "CRITICAL")] for chip in range(5)})  # u 0.25 < 0.35
    lot_alerts("CRITC", ("lot_critical_defects", "CRITICAL"))
    fab.fillers()
    fab.lot("WE2a", [0.925] * 20)
    fab.lot("WE2b", [0.925] * 20)  # 2 of 3 below mu - 2 sigma (0.93)
    lot_alerts("WE2b", ("spc_we2_2of3_beyond_2sigma", "WARNING"))
    fab.fillers()
    for name in ("WE3a", "WE3b", "WE3c", "WE3d"):
        fab.lot(name, [0.935] * 20)  # 4 of 5 below mu - sigma (0.94) at the 4th
    lot_alerts("WE3d", ("spc_we3_4of5_beyond_1sigma", "WARNING"))
    fab.fillers()
    for index in range(8):
        fab.lot(f"WE4{index}", [0.943] * 20)  # 8 in a row below mu - 0.5 sigma (0.945) at the 8th
    lot_alerts("WE47", ("spc_we4_8_in_a_row", "WARNING"))
    fab.fillers()

    day1 = fab.next_day()  # particle on 6 of 100 chips: 0.06 > 0.05
    fab.lot("DAY1", [0.95] * 100, {chip: low for chip in range(6)})
    expected.add(("daily_defect_rate", "DAY", f"{day1}/particle", "WARNING"))
    day2 = fab.next_day()  # particle 0.11 > 0.10, scratch 0.03 > 0.02 (its own limit); lot u 0.14 < 0.21
    fab.lot("DAY2", [0.95] * 100, {chip: low if chip < 11 else [("scratch", "LOW")] for chip in range(14)})
    expected.add(("daily_defect_rate", "DAY", f"{day2}/particle", "CRITICAL"))
    expected.add(("daily_defect_rate", "DAY", f"{day2}/scratch", "WARNING"))
    fab.next_day()  # exactly at the limits (0.05 particle, 0.02 scratch): no alert
    fab.lot("DAY3", [0.95] * 100, {chip: low if chip < 5 else [("scratch", "LOW")] for chip in range(7)})
    return fab, expected


@pytest.fixture
def alerts_env(pipeline_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    rules = tmp_path / "rules.yaml"
    rules.write_text(shipped_rules_text().replace("  # baseline: {", "  # was: {") + PINNED_BASELINE)
    monkeypatch.setenv("CHIPQ_RULES", str(rules))
    return pipeline_env


def _catch_up() -> CatchUpReport:
    return catch_up(defs=build_defs(), echo=print)


def _publish(env, events: list[dict[str, Any]]) -> None:
    with SyncInspectionEventProducer(env.kafka_config, topic=env.inspection_topic) as producer:
        producer.publish_batch(events, key_fn=lambda e: e["inspection_id"])


def _violations_on_topic(env, event_types: tuple[str, ...] = ("THRESHOLD_VIOLATED",)) -> list[dict[str, Any]]:
    """Every event of ``event_types`` on the test's quality topic, in offset order per partition."""
    consumer = Consumer(
        env.kafka_config.librdkafka_config(
            **{"group.id": f"reader-{uuid.uuid4().hex}", "enable.auto.commit": False, "auto.offset.reset": "earliest"}
        )
    )
    decoder = latest_reader_decoder()
    events = []
    try:
        partitions = consumer.list_topics(env.quality_topic, timeout=10).topics[env.quality_topic].partitions
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(env.quality_topic, p), timeout=10)[1] for p in partitions
        }
        consumer.assign([TopicPartition(env.quality_topic, p, 0) for p in partitions])
        remaining = {p for p, end in ends.items() if end > 0}
        while remaining:
            message = consumer.poll(10)
            assert message is not None, f"quality topic stopped short of its watermarks {ends}"
            assert message.error() is None, message.error()
            event, _ = decoder.decode(message.value())
            if event["event_type"] in event_types:
                events.append(event)
            if message.offset() + 1 >= ends[message.partition()]:
                remaining.discard(message.partition())
    finally:
        consumer.close()
    return events


def _identity(event: dict[str, Any]) -> tuple[str, str, str, str]:
    subject = event["batch_id"] if event["scope"] == "LOT" else f"{event['event_date']}/{event['defect_type']}"
    return (event["rule"], event["scope"], subject, event["alert_level"])


def test_each_shipped_rule_fires_exactly_where_built_and_rerunning_adds_nothing(alerts_env) -> None:
    fab, expected = _build(f"ALR-{uuid.uuid4().hex[:6]}")
    _publish(alerts_env, fab.events)

    _catch_up()
    events = _violations_on_topic(alerts_env)
    assert {_identity(e) for e in events} == expected
    assert len(events) == len({e["event_id"] for e in events}) == len(expected), "one event per violation"
    by_rule = {(e["rule"], e["batch_id"]): e for e in events}
    mean_w = by_rule[("lot_mean_score", fab.names["MEANW"])]
    assert mean_w["observed_value"] == pytest.approx(0.84) and mean_w["threshold"] == 0.85
    we1 = by_rule[("spc_we1_beyond_3sigma", fab.names["MEANW"])]
    assert we1["threshold"] == pytest.approx(0.92) and "mu - 3 sigma" in we1["metadata"]["message"]

    # The same pipeline again; then re-inspections with the same results rewrite two lots and
    # their day: the rules are evaluated again, nothing new is published.
    _catch_up()
    again = [
        {**e, "event_id": str(uuid.uuid4()), "event_time": e["event_time"] + dt.timedelta(seconds=30)}
        for e in fab.events
        if e["batch_id"] in (fab.names["MEANW"], fab.names["WE2b"])
    ]
    _publish(alerts_env, again)
    report = _catch_up()
    assert set(report.runs) == {"pipeline_cycle"}
    assert report.partitions["marts/lot_quality_scores"] == {
        lot_partition_key(fab.names[name]) for name in ("MEANW", "WE2b")
    }
    assert len(_violations_on_topic(alerts_env)) == len(events)

    # The analysts see them, published, through the snapshot.
    listed = recent_alerts(alerts_env.snapshot, limit=100)
    assert len(listed) == len(expected) and listed["published"].all()
    outbox = query_snapshot(alerts_env.snapshot, "SELECT max(publish_attempts) AS attempts FROM ops.alert_outbox")
    assert int(outbox["attempts"][0]) == 1


def test_a_second_pipeline_from_scratch_derives_the_same_ids_and_publishes_none_again(
    alerts_env, tmp_path: Path, monkeypatch
) -> None:
    fab, expected = _build(f"ALT-{uuid.uuid4().hex[:6]}")
    _publish(alerts_env, fab.events)
    _catch_up()
    first = {e["event_id"] for e in _violations_on_topic(alerts_env)}

    # A whole new warehouse and Dagster instance over the same topics: it lands the alerts the first
    # one published, derives the same ids (the SPC baseline keeps its number) and sends none again.
    second_home = tmp_path / "second"
    second_home.mkdir()
    monkeypatch.setenv("CHIPQ_HOME", str(second_home))
    monkeypatch.setenv("DAGSTER_HOME", str(second_home / "dagster"))
    monkeypatch.setenv("CHIPQ_PIPELINE_GROUP", f"second-{uuid.uuid4().hex[:8]}")
    _catch_up()
    events = _violations_on_topic(alerts_env)
    assert len(events) == len(first) == len(expected), "no violation published twice"
    listed = query_snapshot(
        second_home / "analytics.duckdb",
        "SELECT event_id, published, publish_attempts FROM ops.alerts JOIN ops.alert_outbox USING (event_id)",
    )
    assert set(listed["event_id"]) == first, "the second warehouse derived the same event ids"
    assert listed["published"].all() and (listed["publish_attempts"] == 0).all(), "found on the topic, not sent"


def test_a_crash_between_send_and_mark_sends_nothing_again(alerts_env) -> None:
    fab, expected = _build(f"ALC-{uuid.uuid4().hex[:6]}")
    _publish(alerts_env, fab.events)
    crashed = subprocess.run(
        [
            sys.executable,
            "-c",
            "from chipq_pipelines.runner import CatchUpReport, catch_up; catch_up()",
        ],
        env={**os.environ, "CHIPQ_FAULT_INJECT": "alerts_after_send"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert crashed.returncode == 137, crashed.stderr[-3000:]
    sent_once = _violations_on_topic(alerts_env)
    assert {_identity(e) for e in sent_once} == expected, "the crashed run had sent everything"

    # The next run lands the quality topic, finds the events there and marks their rows: none is sent again.
    _catch_up()
    events = _violations_on_topic(alerts_env)
    assert len(events) == len(expected), "nothing sent twice"
    assert {e["event_id"] for e in events} == {e["event_id"] for e in sent_once}
    outbox = query_snapshot(
        alerts_env.snapshot,
        "SELECT min(publish_attempts) AS lo, max(publish_attempts) AS hi, count(*) AS n, "
        "count(*) FILTER (WHERE published_at IS NULL) AS unpublished FROM ops.alert_outbox",
    )
    assert int(outbox["lo"][0]) == int(outbox["hi"][0]) == 1 and int(outbox["n"][0]) == len(expected)
    assert int(outbox["unpublished"][0]) == 0


ALERT_TYPES = ("THRESHOLD_VIOLATED", "THRESHOLD_CLEARED")


def _rebuild_from_kafka(env) -> CatchUpReport:
    """What the README offers: delete the warehouse file (and the analysts' view), catch up again."""
    env.warehouse.unlink()
    env.snapshot.unlink(missing_ok=True)
    return _catch_up()


def _count_per_event_id(events: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in events:
        counts[event["event_id"]] = counts.get(event["event_id"], 0) + 1
    return counts


def test_a_rebuild_from_kafka_publishes_no_alert_id_twice(pipeline_env) -> None:
    """Shipped rules with the SPC baseline computed (so SPC ids carry its number, 1+b1): delete, catch up."""
    fab, _expected = _build(f"ALR-{uuid.uuid4().hex[:6]}")
    _publish(pipeline_env, fab.events)
    _catch_up()
    before = _violations_on_topic(pipeline_env, ALERT_TYPES)
    assert any("+b1" in e["metadata"]["rules_version"] for e in before), "SPC alerts against the computed baseline"

    report = _rebuild_from_kafka(pipeline_env)
    assert report.events_inserted >= len(fab.events), "the warehouse was rebuilt from the topics"
    after = _violations_on_topic(pipeline_env, ALERT_TYPES)
    assert max(_count_per_event_id(after).values()) == 1, "an alert was published twice"
    assert len(after) == len(before)
    rebuilt = query_snapshot(pipeline_env.snapshot, "SELECT event_id, publish_attempts FROM ops.alert_outbox")
    assert set(rebuilt["event_id"]) == {e["event_id"] for e in before}, "the rebuild derived the same ids"
    assert (rebuilt["publish_attempts"] == 0).all()


def _rework(fab: Fab, lot_id: str, chips: range, score: float) -> list[dict[str, Any]]:
    """The inspections of ``chips`` of ``lot_id`` completed again (same inspection ids) with ``score``."""
    fab.clock += dt.timedelta(minutes=30)
    return [
        {
            **e,
            "event_id": str(uuid.uuid4()),
            "event_time": fab.clock + dt.timedelta(seconds=index),
            "quality_score": score,
        }
        for index, e in enumerate(fab.events)
        if e["batch_id"] == lot_id and int(e["inspection_id"].rsplit("/I", 1)[1]) in chips
    ]


def test_rework_clears_a_violation_once_and_breaking_again_raises_a_new_one(alerts_env) -> None:
    fab = Fab(f"ALW-{uuid.uuid4().hex[:6]}", dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=2))
    fab.fillers(3)
    lot = fab.lot("PASSW", [1.0] * 17 + [0.8] * 3)  # pass rate 0.85: lot_pass_rate WARNING, nothing else
    fab.fillers()
    _publish(alerts_env, fab.events)
    _catch_up()
    (violated,) = _violations_on_topic(alerts_env, ALERT_TYPES)
    assert (violated["event_type"], violated["rule"], violated["batch_id"]) == (
        "THRESHOLD_VIOLATED",
        "lot_pass_rate",
        lot,
    )
    assert violated["metadata"]["episode"] == "1"

    # Rework: the three failing inspections complete again, good. One clearance; re-runs and the same
    # good results re-sent add none.
    good = _rework(fab, lot, range(17, 20), 1.0)
    _publish(alerts_env, good)
    _catch_up()
    _catch_up()
    _publish(alerts_env, [{**e, "event_id": str(uuid.uuid4())} for e in good])
    _catch_up()
    events = _violations_on_topic(alerts_env, ALERT_TYPES)
    assert [e["event_type"] for e in events] == ["THRESHOLD_VIOLATED", "THRESHOLD_CLEARED"]
    cleared = events[1]
    assert (cleared["rule"], cleared["scope"], cleared["batch_id"]) == ("lot_pass_rate", "LOT", lot)
    assert cleared["alert_level"] == "WARNING" and cleared["observed_value"] == 1.0 and cleared["pass_fail"] is True
    assert cleared["metadata"]["episode"] == "1"

    # Broken again: a new violation with a new id (episode 2).
    _publish(alerts_env, _rework(fab, lot, range(17, 20), 0.8))
    _catch_up()
    _catch_up()
    events = _violations_on_topic(alerts_env, ALERT_TYPES)
    assert [e["event_type"] for e in events] == ["THRESHOLD_VIOLATED", "THRESHOLD_CLEARED", "THRESHOLD_VIOLATED"]
    again = events[2]
    assert again["event_id"] != violated["event_id"] and again["metadata"]["episode"] == "2"
    assert (again["rule"], again["batch_id"], again["alert_level"]) == ("lot_pass_rate", lot, "WARNING")

    # `chipq alerts` shows both episodes: the first cleared, the second open.
    listed = recent_alerts(alerts_env.snapshot, limit=10)
    states = dict(zip(listed["detected_at"].rank().astype(int), listed["state"], strict=True))
    assert states == {1: "cleared", 2: "open"} and listed["published"].all()

    # A rebuild from Kafka derives the same episodes: nothing published again.
    _rebuild_from_kafka(alerts_env)
    assert _violations_on_topic(alerts_env, ALERT_TYPES) == events
    rebuilt = recent_alerts(alerts_env.snapshot, limit=10)
    assert sorted(rebuilt["state"]) == ["cleared", "open"]
