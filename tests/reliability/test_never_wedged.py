"""No single bad event, deleted offset or refused commit stops the pipeline or passes unseen.

Each case records its row of docs/reliability.md (sent, landed, rejected, lost,
duplicated read from the warehouse) and runs in `make test` too (``short``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from chipq_pipelines.cli import main as chipq
from chipq_pipelines.definitions import build_defs
from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.schemas import INSPECTION, load_schema
from chipq_pipelines.events.serialization import AvroSerializer
from chipq_pipelines.local_kafka import LocalKafka, free_port
from chipq_pipelines.paths import ChipqHome
from chipq_pipelines.runner import catch_up, ensure_dagster_home

pytestmark = [pytest.mark.reliability, pytest.mark.short]

RECONCILED_OP = "ops__e2e_flow_probe_kafka_offsets_reconciled"


@pytest.fixture
def pipeline_env(kafka_bootstrap: str, make_pipeline_env: Any) -> Any:
    """An isolated pipeline on the session's broker, its variables set in this process."""
    return make_pipeline_env(kafka_bootstrap)


def _events(prefix: str, lots: int = 3, chips: int = 10, score: float = 0.95) -> list[dict[str, Any]]:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    return [
        {
            "event_id": str(uuid.uuid4()),
            "event_type": "INSPECTION_COMPLETED",
            "event_time": start + dt.timedelta(minutes=lot, seconds=chip),
            "inspection_id": f"{prefix}-{lot}/I{chip}",
            "batch_id": f"{prefix}-{lot}",
            "chip_id": f"{prefix}-{lot}/C{chip}",
            "inspection_type": "optical",
            "status": "completed",
            "quality_score": score,
            "defects": [],
            "metadata": {},
        }
        for lot in range(lots)
        for chip in range(chips)
    ]


def _query(env, sql: str, params: list[Any] | None = None) -> list[tuple]:
    conn = duckdb.connect(str(env.warehouse), read_only=True)
    try:
        return conn.execute(sql, params or []).fetchall()
    finally:
        conn.close()


def _reconciled() -> dg.AssetCheckEvaluation:
    """The kafka_offsets_reconciled check, run alone (plus the canary probe it belongs to)."""
    run_config = {"ops": {RECONCILED_OP: {"config": {"max_stall_seconds": 600.0}}}}
    ensure_dagster_home()
    job = build_defs().resolve_job_def("flow_checks")
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(instance=instance, run_config=run_config, raise_on_error=False)
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "kafka_offsets_reconciled"]
    return evaluation


@pytest.mark.case("bad input", "blank, whitespace-only and control-character lot and chip ids among good lots")
def test_blank_and_control_character_lot_ids_are_rejected_and_everything_else_completes(pipeline_env, rel, row) -> None:
    prefix = f"WEDGE-{uuid.uuid4().hex[:6]}"
    good = _events(prefix, lots=2) + _events(f"{prefix}-low", lots=1, score=0.5)  # the last lot breaks a rule
    bad_lots = ["", "   ", "\t", f"{prefix}-\x1b[31mred", f"{prefix}\nX"]
    template = good[0]
    bad = [
        {**template, "event_id": str(uuid.uuid4()), "batch_id": lot, "inspection_id": f"bad-{i}"}
        for i, lot in enumerate(bad_lots)
    ]
    bad.append({**template, "event_id": str(uuid.uuid4()), "chip_id": " ", "inspection_id": "bad-chip"})
    # The producer itself refuses such ids (a clear error at the source); other producers may not:
    # these are encoded bypassing the library's check, as a foreign service would send them.
    serializer = AvroSerializer(load_schema(INSPECTION), config=KafkaConfig())
    from confluent_kafka import Producer

    raw = Producer({"bootstrap.servers": pipeline_env.bootstrap, "enable.idempotence": True})
    rel.publish(pipeline_env, good[:15])
    for event in bad:
        raw.produce(pipeline_env.inspection_topic, value=serializer.serialize(event), key=b"bad")
    assert raw.flush(30) == 0
    rel.publish(pipeline_env, good[15:])

    finished = rel.catch_up_subprocess(pipeline_env)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-3000:]

    lots = {lot for (lot,) in _query(pipeline_env, "SELECT lot_id FROM marts.lot_quality_scores")}
    assert lots == {f"{prefix}-0", f"{prefix}-1", f"{prefix}-low-0"}
    reasons = [r for (r,) in _query(pipeline_env, 'SELECT reason FROM ops.rejected_events ORDER BY "offset"')]
    assert len(reasons) == len(bad)
    assert sum("batch_id is blank" in r or "batch_id is whitespace only" in r for r in reasons) == 3
    assert sum("batch_id holds a control character" in r for r in reasons) == 2
    assert sum("chip_id is whitespace only" in r for r in reasons) == 1
    # the alerts were evaluated and published: the low lot's violations are on Kafka
    published = _query(
        pipeline_env, "SELECT count(*) FROM ops.alert_outbox WHERE lot_id = ? AND published_at IS NOT NULL",
        [f"{prefix}-low-0"],
    )  # fmt: skip
    assert published[0][0] >= 1
    # and the analysts' view shows the same lots
    result = CliRunner().invoke(chipq, ["sql", "SELECT count(*) AS lots FROM marts.lot_quality_scores"], env={})
    assert result.exit_code == 0 and "3" in result.output, result.output
    counts = rel.tally(pipeline_env, {e["event_id"] for e in good})
    row.sent, row.landed, row.rejected = len(good) + len(bad), counts.landed_ids, len(reasons)
    row.lost, row.duplicated = counts.lost + len(bad) - len(reasons), counts.duplicated
    row.note(
        "`chipq catch-up` exits 0; the 3 good lots reach the marts and the alerts (the bad-scoring lot's are "
        "published); each bad id is rejected with its reason"
    )


def _watermarks(env) -> dict[int, tuple[int, int]]:
    consumer = Consumer({"bootstrap.servers": env.bootstrap, "group.id": "chipq-test-watermarks"})
    try:
        metadata = consumer.list_topics(env.inspection_topic, timeout=10).topics[env.inspection_topic]
        return {
            p: consumer.get_watermark_offsets(TopicPartition(env.inspection_topic, p), timeout=10, cached=False)
            for p in sorted(metadata.partitions)
        }
    finally:
        consumer.close()


@pytest.mark.case(
    "retention", "records deleted (`delete_records`) before they landed: two of one partition, every new one of another"
)
def test_records_deleted_before_landing_are_recorded_as_exact_gaps_until_acknowledged(pipeline_env, rel, row) -> None:
    prefix = f"GAP-{uuid.uuid4().hex[:6]}"
    first = _events(f"{prefix}-a", lots=3)
    rel.publish(pipeline_env, first)
    catch_up(defs=build_defs(), echo=print)
    landed = {p: high for p, (_, high) in _watermarks(pipeline_env).items()}
    second = _events(f"{prefix}-b", lots=6)
    rel.publish(pipeline_env, second)
    highs = {p: high for p, (_, high) in _watermarks(pipeline_env).items()}
    new = {p: highs[p] - landed[p] for p in highs}
    partial, whole = sorted(new, key=lambda p: -new[p])[:2]
    assert new[partial] >= 3 and new[whole] >= 1, new
    # Retention (here delete_records) removes records the pipeline has not read: two of one partition,
    # every new one of another.
    cut = {partial: landed[partial] + 2, whole: highs[whole]}
    admin = AdminClient({"bootstrap.servers": pipeline_env.bootstrap})
    for future in admin.delete_records(
        [TopicPartition(pipeline_env.inspection_topic, p, offset) for p, offset in cut.items()]
    ).values():
        future.result(timeout=30)

    before = _reconciled()  # not landed yet, already gone: the check says so before ingest runs
    assert not before.passed and "records deleted before landing" in (before.description or "")
    assert before.severity == dg.AssetCheckSeverity.ERROR

    catch_up(defs=build_defs(), echo=print)
    gaps = _query(
        pipeline_env,
        "SELECT topic, partition, first_offset, last_offset, acknowledged_at FROM ops.offset_gaps ORDER BY partition",
    )
    expected = sorted((pipeline_env.inspection_topic, p, landed[p], cut[p] - 1, None) for p in (partial, whole))
    assert sorted(gaps) == expected
    lost = sum(cut[p] - landed[p] for p in cut)
    raw = _query(pipeline_env, "SELECT count(*) FROM raw.inspection_events WHERE NOT is_canary")[0][0]
    assert raw == len(first) + len(second) - lost  # everything else landed, nothing twice
    counts = rel.tally(pipeline_env, {e["event_id"] for e in first + second})
    row.sent, row.landed, row.rejected = len(first) + len(second), raw, 0
    row.lost, row.duplicated = counts.lost - lost, counts.duplicated
    row.note(
        f"{lost} records deleted by the broker before landing, recorded exactly as {len(gaps)} rows of "
        "ops.offset_gaps (not counted as lost); kafka_offsets_reconciled fails (ERROR) until `chipq gaps ack`"
    )
    assert _query(pipeline_env, "SELECT count(*) FROM ops.rejected_events")[0][0] == 0

    failing = _reconciled()
    assert not failing.passed and failing.severity == dg.AssetCheckSeverity.ERROR
    assert int(failing.metadata["unacknowledged_gap_records"].value) == lost  # type: ignore[arg-type]

    listed = CliRunner().invoke(chipq, ["gaps"])
    assert listed.exit_code == 0, listed.output
    assert pipeline_env.inspection_topic in listed.output and str(landed[partial]) in listed.output
    alerts = CliRunner().invoke(chipq, ["alerts"])
    assert f"{lost} records in 2 offset gaps" in alerts.output

    refused = CliRunner().invoke(chipq, ["gaps", "ack", pipeline_env.inspection_topic, str(partial), "--note", " "])
    assert refused.exit_code != 0 and "--note" in refused.output
    for partition in (partial, whole):
        done = CliRunner().invoke(
            chipq, ["gaps", "ack", pipeline_env.inspection_topic, str(partition), "--note", "replayed from MES"]
        )
        assert done.exit_code == 0, done.output
        assert f"offsets {landed[partition]}..{cut[partition] - 1}" in done.output
    assert CliRunner().invoke(chipq, ["gaps"]).output.startswith("No offset gaps")
    assert _reconciled().passed
    # the same gap is never recorded twice: a later run finds nothing new to record
    catch_up(defs=build_defs(), echo=print)
    assert _query(pipeline_env, "SELECT count(*) FROM ops.offset_gaps")[0][0] == 2


class AclKafka(LocalKafka):
    """A LocalKafka that enforces ACLs (KRaft's StandardAuthorizer); anything without an ACL stays allowed."""

    def _write_config(self, controller_port: int) -> Path:
        path = super()._write_config(controller_port)
        with path.open("a") as config:
            config.write(
                "\nauthorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\n"
                "allow.everyone.if.no.acl.found=true\n"
            )
        return path


def _group_acls(group: str) -> list[AclBinding]:
    """Committing offsets needs READ on the group (refused here); reading them, DESCRIBE (allowed)."""
    return [
        AclBinding(ResourceType.GROUP, group, ResourcePatternType.LITERAL, "User:ANONYMOUS", "*", op, permission)
        for op, permission in (
            (AclOperation.READ, AclPermissionType.DENY),
            (AclOperation.DESCRIBE, AclPermissionType.ALLOW),
        )
    ]


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[str]:
    broker = AclKafka(port=free_port(), instance_dir=tmp_path / "acl-kafka", lib_dir=ChipqHome.from_env().kafka_lib)
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.mark.case("broker faults", "offset commits refused (ACL: GROUP_AUTHORIZATION_FAILED), 40 records a run")
def test_refused_offset_commits_neither_livelock_the_planner_nor_pass_unseen(
    acl_broker, make_pipeline_env, rel, row
) -> None:
    env = make_pipeline_env(acl_broker, CHIPQ_MAX_RECORDS_PER_RUN="40")
    admin = AdminClient({"bootstrap.servers": acl_broker})
    for future in admin.create_acls(_group_acls(env.group)).values():
        future.result(timeout=30)
    events = _events(f"ACL-{uuid.uuid4().hex[:6]}", lots=10, chips=20)  # 200 events: at least 5 runs of 40
    rel.publish(env, events)

    report = catch_up(defs=build_defs(), echo=print, max_rounds=40)
    counts = rel.tally(env, {e["event_id"] for e in events})
    row.sent, row.landed, row.rejected, row.lost, row.duplicated = (
        len(events),
        counts.landed_ids,
        counts.rejected,
        counts.lost,
        counts.duplicated,
    )
    row.note(
        f"{report.runs.get('pipeline_cycle', 0)} runs planned from the landed offsets; "
        "the check warns while commits fail"
    )
    landed = _query(env, "SELECT count(*) FROM raw.inspection_events")[0][0]
    assert landed == len(events)
    assert report.rounds < 40, "the planner kept planning ranges that had landed already"
    assert report.runs.get("pipeline_cycle", 0) <= len(events) // 40 + 2

    # Nothing was mirrored to the group: the check says so (WARN: nothing is lost)
    check = _reconciled()
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "group behind the warehouse" in (check.description or "")

    # Commits allowed again: the next run mirrors every landed offset, and the check passes
    every_group_acl = AclBindingFilter(
        ResourceType.GROUP, env.group, ResourcePatternType.LITERAL, None, None, AclOperation.ANY, AclPermissionType.ANY
    )
    for future in admin.delete_acls([every_group_acl]).values():
        future.result(timeout=30)
    rel.publish(env, _events(f"ACL2-{uuid.uuid4().hex[:6]}", lots=1, chips=3))
    catch_up(defs=build_defs(), echo=print, max_rounds=10)
    assert _reconciled().passed
