"""Faults: ingest runs killed between landing and committing, broker SIGKILLs, a producer losing its broker."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from chipq_pipelines.events.errors import PublishError
from chipq_pipelines.events.producers import SyncInspectionEventProducer

pytestmark = pytest.mark.reliability

CRASHES = 5
BROKER_KILLS = 5


class Publisher(threading.Thread):
    """Publishes fresh events in small batches until stopped; keeps acknowledged and failed ids apart."""

    def __init__(self, rel, env, *, batch: int, pause_s: float, lot_prefix: str, max_batches: int = 10**9) -> None:
        super().__init__(daemon=True, name=f"publisher-{lot_prefix}")
        self.rel, self.env, self.batch, self.pause_s, self.lot_prefix = rel, env, batch, pause_s, lot_prefix
        self.stop = threading.Event()
        self.acked: set[str] = set()
        self.failed: set[str] = set()
        self.errors: list[str] = []
        self.batches = 0
        self.max_batches = max_batches

    def run(self) -> None:
        with SyncInspectionEventProducer(self.env.kafka_config, topic=self.env.inspection_topic) as producer:
            while not self.stop.is_set() and self.batches < self.max_batches:
                events = self.rel.make_events(self.batch, f"{self.lot_prefix}{self.batches}")
                acked, failed = self.rel.publish_acked(producer, events)
                self.acked |= acked
                if failed:
                    self.failed |= failed
                    self.errors.append(f"{len(failed)} not acknowledged")
                self.batches += 1
                self.stop.wait(self.pause_s)

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=120)


def _landed_next_offsets(env) -> dict[int, int]:
    import duckdb

    if not env.warehouse.exists():
        return {}
    conn = duckdb.connect(str(env.warehouse), read_only=True)
    try:
        return dict(
            conn.execute(
                "SELECT partition, next_offset FROM ops.ingested_offsets WHERE topic = ?", [env.inspection_topic]
            ).fetchall()
        )
    except duckdb.CatalogException:
        return {}
    finally:
        conn.close()


@pytest.mark.case("fault", "ingest run killed (os._exit 137) between landing and committing, during a stream")
@pytest.mark.short
def test_ingest_killed_between_landing_and_committing(kafka_bootstrap, make_env, rel, row) -> None:
    env = make_env(kafka_bootstrap)
    publisher = Publisher(rel, env, batch=100, pause_s=0.5, lot_prefix="CRASH")
    publisher.start()
    crashes = 0
    landed_by_crashes = 0
    try:
        for _ in range(CRASHES):
            before = sum(_landed_next_offsets(env).values())
            deadline = time.monotonic() + 30
            while sum(rel.high_watermarks(env.kafka_config, env.inspection_topic).values()) <= before:
                assert time.monotonic() < deadline, "the publisher made no progress"
                time.sleep(0.2)
            crashed = rel.catch_up_subprocess(env, CHIPQ_FAULT_INJECT="after_landing")
            assert crashed.returncode == 137, crashed.stderr[-2000:]
            crashes += 1
            after = sum(_landed_next_offsets(env).values())
            assert after > before, "the killed run landed nothing: the fault point was not reached"
            landed_by_crashes += after - before
    finally:
        publisher.finish()
    report, errors = rel.catch_up_until_ok(60)
    if report is None:
        row.note(f"recovery catch-up failed: {errors[-1]}")
        report = SimpleNamespace(duplicates_skipped="?")
    counts = rel.tally(env, publisher.acked)
    watermarks = rel.high_watermarks(env.kafka_config, env.inspection_topic)
    row.repetitions = crashes
    row.sent = len(publisher.acked)
    row.landed = counts.landed_ids
    row.rejected = counts.rejected
    row.lost = counts.lost
    row.duplicated = counts.duplicated
    row.note(
        f"{landed_by_crashes} records landed by killed runs whose offsets were never committed to the group; "
        "the recovery catch-up re-anchored to the offsets landed in DuckDB "
        f"({report.duplicates_skipped} re-read event ids skipped)"
    )
    assert publisher.failed == set(), publisher.errors
    assert counts.lost == 0 and counts.duplicated == 0
    assert counts.offsets_landed == {p: o for p, o in watermarks.items() if o > 0}


@pytest.mark.timeout(600)
@pytest.mark.case("fault", "broker SIGKILLed and restarted (same port, same data) during ingestion")
def test_broker_sigkilled_and_restarted_during_ingestion(own_broker, make_env, rel, row) -> None:
    env = make_env(own_broker.bootstrap)
    publisher = Publisher(rel, env, batch=100, pause_s=0.25, lot_prefix="BROKER", max_batches=300)
    restarts: list[float] = []
    kill_errors: list[str] = []

    def killer() -> None:
        try:
            for _ in range(BROKER_KILLS):
                time.sleep(4.0)
                own_broker.kill()
                down = time.monotonic()
                time.sleep(1.0)
                own_broker.start(quiet=True)
                restarts.append(time.monotonic() - down)
        except Exception as exc:  # reported by the test, not lost in the thread
            kill_errors.append(repr(exc))

    chaos = threading.Thread(target=killer, daemon=True, name="broker-killer")
    ingest_errors: list[str] = []
    publisher.start()
    time.sleep(1.0)
    chaos.start()
    rounds = 0
    while chaos.is_alive():
        try:
            rel.catch_up(max_rounds=2)  # bounded: the stream keeps flowing
        except Exception as exc:
            ingest_errors.append(type(exc).__name__)
            time.sleep(0.5)
        rounds += 1
    publisher.finish()
    assert not kill_errors, kill_errors
    # Recover: catch up until a round succeeds with the broker up.
    recovered, recovery_errors = rel.catch_up_until_ok(120)
    if recovered is None:
        row.note(f"recovery catch-up kept failing for 120 s; last error: {recovery_errors[-1]}")
    row.repetitions = len(restarts)
    rel.count_publisher_row(row, env, publisher.acked, publisher.failed)
    row.note(
        f"restart took {min(restarts):.1f}–{max(restarts):.1f} s; {rounds} catch-up rounds during the chaos, "
        f"{len(ingest_errors)} of them failed while the broker was down and were retried"
        + (f" ({', '.join(sorted(set(ingest_errors)))})" if ingest_errors else "")
        + f"; {len(publisher.failed)} events the producer reported as not acknowledged (excluded from sent)"
    )
    assert row.lost == 0 and row.duplicated == 0


@pytest.mark.case("fault", "producer whose broker disappears (SIGKILL) mid-stream")
@pytest.mark.short
def test_producer_whose_broker_disappears(own_broker, make_env, rel, row) -> None:
    env = make_env(own_broker.bootstrap)
    before = rel.make_events(300, "GONE-A")
    after = rel.make_events(200, "GONE-B")
    started = time.monotonic()
    with SyncInspectionEventProducer(env.kafka_config, topic=env.inspection_topic) as producer:
        reports = producer.publish_batch(before, key_fn=lambda e: e["inspection_id"])
        own_broker.kill()
        failed_at = time.monotonic()
        with pytest.raises(PublishError) as caught:
            producer.publish_batch(after, key_fn=lambda e: e["inspection_id"])
        error_after = time.monotonic() - failed_at
        metrics = producer.get_metrics()
    error = caught.value
    own_broker.start(quiet=True)
    watermarks = rel.high_watermarks(env.kafka_config, env.inspection_topic)
    rel.catch_up_until_ok(60)
    counts = rel.tally(env, {e["event_id"] for e in before} | {e["event_id"] for e in after})
    row.sent = metrics["messages_sent"]
    row.landed = counts.landed_ids
    row.rejected = counts.rejected
    row.lost = counts.lost - len(after)  # the failed batch was never reported as sent
    row.duplicated = counts.duplicated
    row.seconds = time.monotonic() - started
    row.note(
        f"caller got PublishError after {error_after:.0f} s ({len(error.failures)} of {len(after)} failures, "
        f"first: {error.failures[0][1] if error.failures else str(error)[:80]}); metrics messages_sent="
        f"{metrics['messages_sent']}, messages_failed={metrics['messages_failed']}; after restart the topic "
        f"holds {sum(watermarks.values())} records"
    )
    assert len(reports) == len(before)
    assert len(error.failures) == len(after)
    assert metrics["messages_sent"] == len(before)
    assert metrics["messages_failed"] == len(after)
    assert metrics["messages_in_flight"] == 0
    # Nothing reported as sent that was not: the topic holds exactly the acknowledged events.
    assert sum(watermarks.values()) == len(before)
    assert counts.landed_ids == len(before)
    assert counts.duplicated == 0
