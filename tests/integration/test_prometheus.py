"""Prometheus scrapes `chipq metrics` and `chipq processor --metrics-port`; its rules are valid and do what they say.

A real Prometheus server (Debian's package, installed by ``scripts/install-prometheus.sh``
like Chromium for the browser test) scrapes both endpoints every second with a config
and storage of its own on free ports; the test asks its HTTP API for the values and
compares them with what Kafka and the analysts' view say. A machine where Prometheus
cannot be installed fails these tests; they never skip.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from chipq_pipelines.definitions import build_defs
from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.consumers import ANALYTICS_GROUP
from chipq_pipelines.events.topics import INSPECTION_TOPIC, dlq_topic, ensure_topics
from chipq_pipelines.local_kafka import free_port
from chipq_pipelines.paths import REPO_ROOT
from chipq_pipelines.runner import catch_up
from chipq_pipelines.simulate import generate, publish_simulation
from chipq_pipelines.simulate.publish import default_start
from chipq_pipelines.warehouse.snapshot import open_snapshot

pytestmark = pytest.mark.integration

DEPLOY = REPO_ROOT / "deploy" / "prometheus"
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-prometheus.sh"
PROMETHEUS = Path(os.environ.get("PROMETHEUS", "/usr/bin/prometheus"))
PROMTOOL = Path(os.environ.get("PROMTOOL", "/usr/bin/promtool"))
#: Records of partition 0 deleted before the pipeline reads them.
GAP_RECORDS = 2


@pytest.fixture(scope="module")
def promtool() -> Path:
    """Debian's Prometheus binaries, installed by the repo's script when missing (a fresh machine)."""
    result = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=600)
    if result.returncode != 0 or not (PROMETHEUS.exists() and PROMTOOL.exists()):
        pytest.fail(f"Prometheus is needed and could not be installed:\n{result.stdout}\n{result.stderr}")
    return PROMTOOL


def _promtool(promtool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), *args], capture_output=True, text=True, timeout=60, cwd=DEPLOY)


def test_promtool_accepts_the_rules_and_the_example_config(promtool: Path) -> None:
    rules = _promtool(promtool, "check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS" in rules.stdout
    config = _promtool(promtool, "check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_the_alerting_rules_fire_when_they_should_and_only_then(promtool: Path) -> None:
    """alerts_test.yml: lag growing vs steady, a stale view, rejects and DLQ growth, an unacknowledged gap."""
    result = _promtool(promtool, "test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- the scrape


@dataclass
class Endpoint:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def check_running(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(f"{self.name} exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")


def _start(name: str, command: list[str], port: int, log: Path, env: dict[str, str]) -> Endpoint:
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    return Endpoint(name, process, port, log)


def _stop(endpoint: Endpoint) -> None:
    if endpoint.process.poll() is None:
        endpoint.process.send_signal(signal.SIGTERM)
        try:
            endpoint.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            endpoint.process.kill()
            endpoint.process.wait(timeout=10)


def _wait_http(endpoint: Endpoint, path: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        endpoint.check_running()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}{path}", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(
                f"{endpoint.name} did not answer {path} within {timeout} s:\n{endpoint.log.read_text()[-3000:]}"
            )
        time.sleep(0.2)


class PrometheusApi:
    def __init__(self, server: Endpoint) -> None:
        self.server = server

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.server.port}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query: ``[{"metric": {...}, "value": [timestamp, "value"]}, ...]``."""
        return list(self.get("/api/v1/query", query=promql)["result"])

    def wait_for(self, promql: str, accept: Callable[[list[dict[str, Any]]], bool], timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            self.server.check_running()
            result = self.query(promql)
            if result and accept(result):
                return result
            time.sleep(0.5)
        pytest.fail(f"Prometheus never had an acceptable {promql} within {timeout} s; last: {result}")


def _values(result: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(r["metric"].get(label, "") for label in labels): float(r["value"][1]) for r in result}


def _watermarks(config: KafkaConfig, partition: TopicPartition) -> tuple[int, int]:
    consumer = Consumer(config.librdkafka_config(**{"group.id": "watermarks", "enable.auto.commit": False}))
    try:
        return consumer.get_watermark_offsets(partition, timeout=10, cached=False)
    finally:
        consumer.close()


def _group_lag(config: KafkaConfig, group: str, topics: list[str]) -> dict[tuple[str, str], int]:
    """What Kafka says: high watermark minus the group's committed offset (low watermark if none), per partition."""
    consumer = Consumer(config.librdkafka_config(**{"group.id": group, "enable.auto.commit": False}))
    try:
        lag = {}
        for topic in topics:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
            for tp in tps:
                low, high = consumer.get_watermark_offsets(tp, timeout=10, cached=False)
                position = committed[tp.partition] if committed[tp.partition] >= 0 else low
                lag[(topic, str(tp.partition))] = high - max(position, low)
        return lag
    finally:
        consumer.close()


@pytest.fixture
def prometheus_stack(
    promtool: Path, kafka_bootstrap: str, make_pipeline_env: Callable[..., Any], tmp_path: Path
) -> Iterator[tuple[Any, PrometheusApi]]:
    """A caught-up pipeline, `chipq metrics` and `chipq processor --metrics-port`, and Prometheus scraping both."""
    env = make_pipeline_env(kafka_bootstrap)
    ensure_topics(KafkaConfig(bootstrap_servers=kafka_bootstrap), partitions=3)  # the processor's platform topics
    events, lots = 3_000, 15  # excursions on (≥ 12 lots): threshold alerts are published
    sim = generate(events, seed=11, lots=lots, start=default_start(events, lots))
    publish_simulation(sim, env.kafka_config, topic=env.inspection_topic, progress=False)
    started = time.monotonic()
    catch_up(defs=build_defs(), echo=lambda _line: None)
    print(f"pipeline caught up on {len(sim.records):,} records in {time.monotonic() - started:.1f} s")
    # Retention deleting records before they land (here delete_records): an unacknowledged gap in ops.offset_gaps.
    partition_0 = TopicPartition(env.inspection_topic, 0)
    landed = _watermarks(env.kafka_config, partition_0)[1]
    later = generate(200, seed=14, lots=2, start=default_start(200, 2))
    publish_simulation(later, env.kafka_config, topic=env.inspection_topic, progress=False)
    assert _watermarks(env.kafka_config, partition_0)[1] >= landed + GAP_RECORDS
    admin = AdminClient({"bootstrap.servers": env.bootstrap})
    cut = TopicPartition(env.inspection_topic, 0, landed + GAP_RECORDS)
    for future in admin.delete_records([cut]).values():
        future.result(timeout=30)
    catch_up(defs=build_defs(), echo=lambda _line: None)

    child_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "CHIPQ_ALERT_JSONL": str(tmp_path / "alerts.jsonl")}
    child_env.pop("SCHEMA_REGISTRY_URL", None)
    cli = [sys.executable, "-m", "chipq_pipelines.cli"]
    metrics_port, processor_port, prometheus_port = free_port(), free_port(), free_port()
    endpoints: list[Endpoint] = []
    try:
        metrics = _start(
            "chipq metrics", [*cli, "metrics", "--port", str(metrics_port)], metrics_port, tmp_path / "m.log", child_env
        )
        endpoints.append(metrics)
        processor = _start(
            "chipq processor",
            [*cli, "processor", "--metrics-port", str(processor_port)],
            processor_port,
            tmp_path / "p.log",
            child_env,
        )
        endpoints.append(processor)
        _wait_http(metrics, "/metrics")
        _wait_http(processor, "/metrics")
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {DEPLOY / 'alerts.yml'}\n"
            "scrape_configs:\n"
            f"  - job_name: chipq-pipeline\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
            f"  - job_name: chipq-processor\n    static_configs:\n      - targets: ['127.0.0.1:{processor_port}']\n"
        )
        server = _start(
            "prometheus",
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
                "--log.level=warn",
            ],
            prometheus_port,
            tmp_path / "prometheus.log",
            child_env,
        )
        endpoints.append(server)
        _wait_http(server, "/-/ready")
        yield env, PrometheusApi(server)
    finally:
        for endpoint in reversed(endpoints):
            _stop(endpoint)


def test_prometheus_scrapes_pipeline_lag_snapshot_age_and_the_processor(prometheus_stack) -> None:
    env, api = prometheus_stack
    # Records the pipeline has not caught up with: lag == those records, on every partition as Kafka says.
    more = generate(120, seed=12, lots=2, start=default_start(120, 2))
    backlog = publish_simulation(more, env.kafka_config, topic=env.inspection_topic, progress=False).records
    dlq = Producer(env.kafka_config.librdkafka_config())
    for index in range(2):  # what a consumer's dead-letter path writes: the raw record, to <topic>.dlq
        dlq.produce(dlq_topic(env.inspection_topic), key=f"bad-{index}".encode(), value=b"not avro")
    assert dlq.flush(30) == 0
    del dlq  # no client of this test outlives it

    expected_lag = _group_lag(env.kafka_config, env.group, [env.inspection_topic, env.quality_topic])
    assert sum(expected_lag.values()) == backlog
    job = 'job="chipq-pipeline"'
    lag = api.wait_for(
        f"chipq_pipeline_lag_records{{{job}}}",
        lambda r: _values(r, "topic", "partition") == expected_lag,
    )
    scraped_lag = sum(_values(lag, "topic", "partition").values())
    assert scraped_lag == backlog

    # Snapshot age: the scrape's own clock minus the published_at the analysts' view holds.
    conn = open_snapshot(env.snapshot)
    try:
        ((published_at,),) = conn.execute("SELECT published_at FROM ops.snapshot_info").fetchall()
        ((inspection, quality),) = conn.execute(
            "SELECT (SELECT count(*) FROM raw.inspection_events), (SELECT count(*) FROM raw.quality_events)"
        ).fetchall()
        rejected = dict(conn.execute("SELECT topic, count(*) FROM ops.rejected_events GROUP BY topic").fetchall())
        ((gap_records,),) = conn.execute(
            "SELECT sum(last_offset - first_offset + 1) FROM ops.offset_gaps WHERE acknowledged_at IS NULL"
        ).fetchall()
        alerts = dict(
            conn.execute(
                "SELECT alert_level, count(*) FROM ops.alert_outbox "
                "WHERE event_type = 'THRESHOLD_VIOLATED' AND published_at IS NOT NULL GROUP BY alert_level"
            ).fetchall()
        )
    finally:
        conn.close()
    published = published_at.timestamp()
    (age,) = api.wait_for(f"chipq_snapshot_age_seconds{{{job}}}", lambda r: True)
    (sample,) = api.query(f"timestamp(chipq_snapshot_age_seconds{{{job}}})")
    scraped_age, scraped_at = float(age["value"][1]), float(sample["value"][1])
    # Computed when Prometheus scraped it: the scrape's time minus the publication the view records.
    assert scraped_age == pytest.approx(scraped_at - published, abs=0.5), (scraped_at, published)
    (stamp,) = api.query(f"chipq_snapshot_published_timestamp_seconds{{{job}}}")
    assert float(stamp["value"][1]) == pytest.approx(published, abs=1e-3)

    # The counters as the analysts' view has them.
    landed = _values(api.query(f"chipq_events_landed_total{{{job}}}"), "topic")
    assert landed == {(env.inspection_topic,): inspection, (env.quality_topic,): quality}
    assert inspection > 0 and quality > 0  # the quality topic holds the pipeline's own alerts, landed back
    scraped_rejects = _values(api.query(f"chipq_events_rejected_total{{{job}}}"), "topic")
    assert scraped_rejects == {(t,): rejected.get(t, 0) for t in (env.inspection_topic, env.quality_topic)}
    assert rejected.get(env.inspection_topic, 0) > 0  # the simulation's poison records
    scraped_alerts = _values(api.query(f"chipq_alerts_published_total{{{job}}}"), "level")
    assert scraped_alerts == {(level,): alerts.get(level, 0) for level in {"WARNING", "CRITICAL", *alerts}}
    assert sum(alerts.values()) > 0
    gaps = _values(api.query(f"chipq_offset_gap_records{{{job}}}"), "topic")
    assert gap_records == GAP_RECORDS
    assert gaps == {(env.inspection_topic,): GAP_RECORDS, (env.quality_topic,): 0}
    dlq_records = _values(api.wait_for(f"chipq_dlq_records{{{job}}}", lambda r: True), "topic")
    assert dlq_records == {(env.inspection_topic,): 2, (env.quality_topic,): 0}
    up = _values(api.query("chipq_metrics_source_up"), "source")
    assert up == {("kafka",): 1, ("snapshot",): 1}

    # The processor: its consumers' lag per partition, and its counters move with what it consumes.
    analytics = f'job="chipq-processor",group="{ANALYTICS_GROUP}"'
    assert _values(api.wait_for('chipq_consumer_up{job="chipq-processor"}', lambda r: True)) == {(): 1}
    api.wait_for(  # whatever earlier tests left on the platform's topics consumed first
        f"sum(chipq_consumer_lag_records{{{analytics}}})",
        lambda r: float(r[0]["value"][1]) == 0,
        timeout=120,
    )
    api.wait_for(f'chipq_consumer_lag_records{{{analytics},topic="{INSPECTION_TOPIC}"}}', lambda r: True)
    (before,) = api.query(f"chipq_consumer_messages_consumed_total{{{analytics}}}")
    platform = generate(40, seed=13, lots=1, start=default_start(40, 1))
    sent = publish_simulation(platform, KafkaConfig(bootstrap_servers=env.bootstrap), progress=False).records
    consumed = float(before["value"][1]) + sent
    api.wait_for(
        f"chipq_consumer_messages_consumed_total{{{analytics}}}",
        lambda r: float(r[0]["value"][1]) == consumed,
    )
    failed = api.query(f"chipq_consumer_messages_failed_total{{{analytics}}}")
    assert float(failed[0]["value"][1]) >= len(platform.poison())  # poison records cannot be decoded

    # The rules are loaded and evaluate without error against the scraped series.
    deadline = time.monotonic() + 30
    groups = api.get("/api/v1/rules")["groups"]
    while any(r["health"] == "unknown" for g in groups for r in g["rules"]) and time.monotonic() < deadline:
        time.sleep(0.5)
        groups = api.get("/api/v1/rules")["groups"]
    assert {g["name"] for g in groups} == {"chipq-pipeline", "chipq-processor"}
    unhealthy = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] == "err"]
    assert not unhealthy, unhealthy
    names = set(api.get("/api/v1/label/__name__/values"))
    referenced = set(re.findall(r"\bchipq_[a-z_]+\b", (DEPLOY / "alerts.yml").read_text()))
    assert referenced <= names, f"alerts.yml uses metrics nobody exposes: {sorted(referenced - names)}"

    print(
        f"Prometheus scraped: pipeline lag {scraped_lag:.0f} records (Kafka: {backlog} published since the "
        f"catch-up), snapshot age {scraped_age:.2f} s (published {published_at.isoformat()}), "
        f"landed {inspection}+{quality}, rejected {sum(rejected.values())}, alerts {alerts}, "
        f"unacknowledged gap {GAP_RECORDS} records, DLQ 2; "
        f"processor consumed {consumed:.0f}"
    )
