"""Faults on a 3-broker cluster: one broker SIGKILLed mid-publish and one mid-ingest, each restarted.

With replication 3 and min.insync.replicas=2 the cluster keeps taking acks=all
writes while one node is down; the events library's producer (idempotent,
acks=all) must ride out the leader change without the caller seeing an error,
and `chipq catch-up` must land every acknowledged event exactly once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from types import SimpleNamespace

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException
from confluent_kafka.admin import AdminClient

from chipq_pipelines.events.producers import SyncInspectionEventProducer
from chipq_pipelines.local_cluster import LocalKafkaCluster
from chipq_pipelines.local_kafka import LocalKafka
from chipq_pipelines.paths import REPO_ROOT

pytestmark = pytest.mark.reliability

#: Small runs, so that the catch-up is still landing when the broker dies.
RECORDS_PER_RUN = 5000


class Publisher(threading.Thread):
    """Publishes fresh events through the library's producer until stopped; any exception is kept, not raised."""

    def __init__(self, rel: SimpleNamespace, env, lot_prefix: str) -> None:
        super().__init__(daemon=True, name=f"publisher-{lot_prefix}")
        self.rel, self.env, self.lot_prefix = rel, env, lot_prefix
        self.stop = threading.Event()
        self.acked: set[str] = set()
        self.failed: set[str] = set()
        self.errors: list[str] = []
        self.batches = 0

    def run(self) -> None:
        try:
            with SyncInspectionEventProducer(self.env.kafka_config, topic=self.env.inspection_topic) as producer:
                while not self.stop.is_set():
                    events = self.rel.make_events(100, f"{self.lot_prefix}{self.batches}")
                    acked, failed = self.rel.publish_acked(producer, events)
                    self.acked |= acked
                    if failed:
                        self.failed |= failed
                        self.errors.append(f"{len(failed)} of a batch not acknowledged")
                    self.batches += 1
                    self.stop.wait(0.05)
        except Exception as exc:  # reported by the test
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=120)


def _partitions(admin: AdminClient, topic: str) -> dict[int, tuple[int, list[int]]]:
    """partition → (leader, in-sync replicas); empty while no live broker answered in time."""
    try:
        meta = admin.list_topics(topic, timeout=5).topics[topic]
    except KafkaException:  # the client's metadata connection may be to the node just killed
        return {}
    return {p: (part.leader, list(part.isrs)) for p, part in meta.partitions.items()}


def _busiest_leader(cluster: LocalKafkaCluster, admin: AdminClient, topic: str) -> tuple[LocalKafka, int]:
    """The node leading the most partitions of ``topic``, and how many it leads."""
    leaders = Counter(leader for leader, _ in _partitions(admin, topic).values())
    node_id, led = leaders.most_common(1)[0]
    return next(node for node in cluster.nodes if node.node_id == node_id), led


def _wait(condition, timeout: float, what: str) -> float:
    """Seconds until ``condition()`` holds (polled); fails the test after ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what} did not happen within {timeout:.0f} s"
        time.sleep(0.2)
    return time.monotonic() - started


def _leaders_moved(admin: AdminClient, topic: str, node: LocalKafka):
    def moved() -> bool:
        partitions = _partitions(admin, topic)
        return bool(partitions) and all(leader not in (-1, node.node_id) for leader, _ in partitions.values())

    return moved


def _fully_in_sync(admin: AdminClient, topic: str, size: int):
    def in_sync() -> bool:
        partitions = _partitions(admin, topic)
        return bool(partitions) and all(len(isr) == size for _, isr in partitions.values())

    return in_sync


def _committed(admin: AdminClient, group: str) -> int:
    """Records the pipeline has landed and committed to its consumer group (0 while there is no commit)."""
    try:
        future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
        return sum(max(tp.offset, 0) for tp in future.result(timeout=5).topic_partitions)
    except Exception:  # the group's coordinator may be the node just killed
        return 0


def _restart(node: LocalKafka) -> float:
    started = time.monotonic()
    node.start(quiet=True)
    return time.monotonic() - started


@pytest.mark.timeout(600)
@pytest.mark.case("fault", "3-broker cluster: one broker SIGKILLed mid-publish, another mid-ingest, each restarted")
def test_broker_of_three_sigkilled_mid_publish_and_mid_ingest(own_cluster, make_env, rel, row) -> None:
    cluster = own_cluster
    env = make_env(cluster.bootstrap)
    topic = env.inspection_topic
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap, "log_level": 0})
    assert {len(isr) for _, isr in _partitions(admin, topic).values()} == {3}, "the topic must have 3 in-sync replicas"

    # 1. Mid-publish: the leader of most partitions dies while the producer publishes.
    publisher = Publisher(rel, env, "CLUSTER")
    publisher.start()
    _wait(lambda: len(publisher.acked) >= 2000, 60, "2,000 acknowledged events before the kill")
    victim, led = _busiest_leader(cluster, admin, topic)
    acked_at_kill = len(publisher.acked)
    victim.kill()
    failover_s = _wait(_leaders_moved(admin, topic, victim), 60, "a leader change away from the killed node")
    acked_in_failover = len(publisher.acked) - acked_at_kill
    _wait(lambda: len(publisher.acked) >= acked_at_kill + 2000, 60, "2,000 more acknowledged events")
    acked_while_down = len(publisher.acked) - acked_at_kill
    restart_s = _restart(victim)
    in_sync_s = _wait(_fully_in_sync(admin, topic, 3), 120, "the restarted node back in sync")
    time.sleep(2.0)
    publisher.finish()
    assert not publisher.is_alive(), "the publisher did not stop"

    # 2. Mid-ingest: the busiest leader now dies while `chipq catch-up` lands the backlog in small runs.
    victim2, led2 = _busiest_leader(cluster, admin, topic)
    backlog = sum(rel.high_watermarks(env.kafka_config, topic).values())
    catch_up = subprocess.Popen(
        [sys.executable, "-m", "chipq_pipelines.cli", "catch-up"],
        env={**os.environ, **env.env, "CHIPQ_MAX_RECORDS_PER_RUN": str(RECORDS_PER_RUN)},
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait(lambda: _committed(admin, env.group) > 0 or catch_up.poll() is not None, 120, "a first landed run")
        landed_at_kill = _committed(admin, env.group)
        victim2.kill()
        failover2_s = _wait(_leaders_moved(admin, topic, victim2), 60, "a leader change away from the second node")
        restart2_s = _restart(victim2)
        output, _ = catch_up.communicate(timeout=300)
    finally:
        if catch_up.poll() is None:
            catch_up.kill()
            catch_up.wait()
    in_sync2_s = _wait(_fully_in_sync(admin, topic, 3), 120, "the second node back in sync")
    report, retry_errors = rel.catch_up_until_ok(120)

    row.repetitions = 2
    rel.count_publisher_row(row, env, publisher.acked, publisher.failed)
    row.note(
        f"mid-publish: node {victim.node_id} (leader of {led} of 3 partitions) killed after {acked_at_kill:,} "
        f"acks; leaders moved in {failover_s:.1f} s ({acked_in_failover:,} acks meanwhile: acks=all waits until the "
        f"dead replica leaves the ISR), {acked_while_down:,} events acknowledged while it was down, "
        f"restart {restart_s:.1f} s, back in sync {in_sync_s:.1f} s later; producer errors surfaced to the caller: "
        f"{len(publisher.errors)}"
    )
    row.note(
        f"mid-ingest: node {victim2.node_id} (leader of {led2} of 3 partitions) killed with {landed_at_kill:,} of "
        f"{backlog:,} records landed by `chipq catch-up` ({RECORDS_PER_RUN:,} a run); leaders moved in "
        f"{failover2_s:.1f} s, restart {restart2_s:.1f} s, in sync {in_sync2_s:.1f} s later; the catch-up "
        f"exited {catch_up.returncode}" + (f", then {len(retry_errors)} retries" if retry_errors else "")
    )
    assert publisher.errors == [], publisher.errors
    assert publisher.failed == set()
    assert 0 < landed_at_kill < backlog, "the broker was not killed while the catch-up was landing"
    assert catch_up.returncode == 0, output[-3000:]
    assert report is not None, retry_errors
    assert row.lost == 0 and row.duplicated == 0
    assert row.landed == len(publisher.acked) == backlog
