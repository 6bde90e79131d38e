"""Security: a second local broker with SASL_PLAINTEXT SCRAM-SHA-512, started by the test."""

from __future__ import annotations

import logging
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chipq_pipelines import local_kafka
from chipq_pipelines.events.config import KafkaConfig
from chipq_pipelines.events.producers import SyncInspectionEventProducer
from chipq_pipelines.local_kafka import LocalKafka, LocalKafkaError, free_port

pytestmark = [pytest.mark.reliability, pytest.mark.short]

USER = "chipq"
PASSWORD = "Rel-" + secrets.token_hex(12)  # unique: any occurrence in output is a leak
WRONG_PASSWORD = "Wrong-" + secrets.token_hex(12)
AUTH_DEADLINE_S = 10.0


class ScramKafka(LocalKafka):
    """A LocalKafka whose client listener is SASL_PLAINTEXT with SCRAM-SHA-512 only."""

    def _write_config(self, controller_port: int) -> Path:
        data_dir = self.instance_dir / "data"
        jaas = (
            f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{USER}" password="{PASSWORD}";'
        )
        config = f"""process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
listeners=SASL_PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{self.port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config={jaas}
log.dirs={data_dir}
auto.create.topics.enable=false
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
"""
        path = self.instance_dir / "server.properties"
        path.write_text(config)
        return path

    def _format_storage(self, config: Path, meta: dict[str, object]) -> None:
        if (self.instance_dir / "data" / "meta.properties").exists():
            return
        cluster_id = subprocess.run(
            self._java("kafka.tools.StorageTool", "random-uuid"), capture_output=True, text=True, check=True
        ).stdout.strip()
        scram = f"SCRAM-SHA-512=[name={USER},password={PASSWORD}]"
        proc = subprocess.run(
            self._java(
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id,
                "-c",
                str(config),
                "--add-scram",
                scram,
            ),
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise LocalKafkaError(f"formatting Kafka storage failed:\n{proc.stdout}{proc.stderr}")
        meta["cluster_id"] = cluster_id


def _config(bootstrap: str, password: str) -> KafkaConfig:
    return KafkaConfig(
        bootstrap_servers=bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=USER,
        sasl_password=password,
    )


@pytest.fixture(scope="module")
def scram_broker(rel_kafka_lib: Path) -> Iterator[LocalKafka]:
    instance_dir = Path(tempfile.mkdtemp(prefix="chipq-rel-scram-"))
    broker = ScramKafka(port=free_port(), instance_dir=instance_dir, lib_dir=rel_kafka_lib, heap="512m")

    def answers(bootstrap: str, timeout: float = 2.0) -> bool:  # readiness through SASL
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(_config(bootstrap, PASSWORD).librdkafka_config(log_level=0))
        try:
            admin.list_topics(timeout=timeout)
        except Exception:
            return False
        return True

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(local_kafka, "metadata_answers", answers)
        broker.start(quiet=True)
        try:
            yield broker
        finally:
            broker.stop()
            shutil.rmtree(instance_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def rel_kafka_lib() -> Path:
    from chipq_pipelines.paths import REPO_ROOT, ChipqHome

    lib = ChipqHome.from_env().kafka_lib
    return lib if any(lib.glob("kafka_2.13-*.jar")) else REPO_ROOT / ".chipq" / "kafka" / "lib"


def _run_with_deadline(fn, deadline_s: float) -> tuple[float, BaseException | None, bool]:
    """(seconds, exception, finished) of ``fn()`` run in a thread, waited for at most ``deadline_s``."""
    outcome: dict[str, BaseException | None] = {"exc": None}

    def target() -> None:
        try:
            fn()
        except BaseException as exc:
            outcome["exc"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(deadline_s)
    return time.monotonic() - started, outcome["exc"], not thread.is_alive()


@pytest.mark.case("security", "SASL_PLAINTEXT SCRAM-SHA-512 broker: right credentials end to end")
def test_scram_right_credentials_end_to_end_and_no_password_anywhere(
    scram_broker, make_env, rel, row, sub_rows, caplog, capfd
) -> None:
    caplog.set_level(logging.DEBUG)
    config = _config(scram_broker.bootstrap, PASSWORD)
    env = make_env(
        scram_broker.bootstrap,
        config=config,
        KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        KAFKA_SASL_USERNAME=USER,
        KAFKA_SASL_PASSWORD=PASSWORD,
    )
    events = rel.make_events(1000, "SASL")
    published = rel.publish(env, events)
    rel.catch_up()
    counts = rel.tally(env, published)
    row.sent, row.landed, row.rejected = len(published), counts.landed_ids, counts.rejected
    row.lost, row.duplicated = counts.lost, counts.duplicated
    row.note("events library producer → sensor plan → ingest run → marts → snapshot, all over SASL")

    # Where the password must not appear.
    from chipq_pipelines.definitions import build_defs

    places: dict[str, str] = {
        "repr(KafkaConfig)": repr(config) + str(config) + config.model_dump_json(),
        "resources repr": repr(build_defs().resources),
        "test logs (DEBUG)": caplog.text,
    }
    out, err = capfd.readouterr()
    places["stdout/stderr"] = out + err
    places.update(_dagster_texts(env))
    leaks = sorted(name for name, text in places.items() if PASSWORD in text)
    leak_row = sub_rows("security", "SASL password in no log line, repr, exception, run config or metadata")
    leak_row.repetitions = len(places)
    leak_row.result = "pass" if not leaks else "**FAIL**"
    leak_row.note(f"searched: {', '.join(sorted(places))}" + (f"; FOUND in {', '.join(leaks)}" if leaks else ""))
    assert counts.lost == 0 and counts.duplicated == 0 and counts.landed_ids == len(events)
    assert not leaks


def _dagster_texts(env) -> dict[str, str]:
    """Run configs, tags and every event-log entry (metadata included) of the env's Dagster instance."""
    import dagster as dg

    texts = {"dagster run config + tags": "", "dagster event logs (metadata)": ""}
    with dg.DagsterInstance.from_config(str(env.home / "dagster")) as instance:
        for run in instance.get_runs():
            texts["dagster run config + tags"] += dg.serialize_value(run.run_config) + repr(run.tags)
            for entry in instance.all_logs(run.run_id):
                texts["dagster event logs (metadata)"] += dg.serialize_value(entry)
    return texts


@pytest.mark.case("security", "SASL SCRAM-SHA-512: wrong password fails fast with an authentication error")
def test_scram_wrong_password_fails_fast_saying_authentication_failed(
    scram_broker, make_env, rel, row, sub_rows, caplog, capfd
) -> None:
    caplog.set_level(logging.DEBUG)
    right = make_env(scram_broker.bootstrap, config=_config(scram_broker.bootstrap, PASSWORD))
    wrong = _config(scram_broker.bootstrap, WRONG_PASSWORD)
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}

    def producer_publish() -> None:
        with SyncInspectionEventProducer(wrong, topic=right.inspection_topic) as producer:
            producer.publish_batch(rel.make_events(2, "WRONG"))

    def pipeline_plan() -> None:
        from chipq_pipelines.ingest.planner import plan_ranges

        plan_ranges(wrong, right.inspection_topic, 1000, right.group)

    def pipeline_ingest() -> None:
        from chipq_pipelines.ingest.reader import ingest_ranges
        from chipq_pipelines.warehouse.schema import connect, ensure_schema

        conn = connect(right.warehouse)
        ensure_schema(conn)
        try:  # a planned range, as an ingest run gets it from its sensor
            ingest_ranges(wrong, conn, right.inspection_topic, {0: (0, 10)}, group_id=right.group)
        finally:
            conn.close()

    results = {}
    for name, fn in (
        ("events library producer", producer_publish),
        ("offset planner (sensor)", pipeline_plan),
        ("ingest reader (run)", pipeline_ingest),
    ):
        seconds, exc, finished = _run_with_deadline(fn, 60)
        timings[name] = seconds
        errors[name] = f"{type(exc).__name__}: {exc}" if exc else ("no error" if finished else "still waiting at 60 s")
        results[name] = (seconds, exc, finished)
    out, err = capfd.readouterr()
    leaked = WRONG_PASSWORD in (caplog.text + out + err + "".join(errors.values()))
    ok_all = True
    for name, (seconds, exc, _finished) in results.items():
        entry = sub_rows("security", f"wrong password via the {name}")
        text = errors[name]
        ok = exc is not None and seconds <= AUTH_DEADLINE_S and "authentication" in text.lower()
        ok_all &= ok
        entry.seconds = seconds
        entry.result = "pass" if ok else "**FAIL**"
        entry.note(f"after {seconds:.1f} s: {text[:220]}")
    row.note("wrong password never echoed" if not leaked else "the wrong password appeared in output")
    row.result = "pass" if ok_all and not leaked else "**FAIL**"
    assert not leaked
    assert ok_all, {k: (round(timings[k], 1), errors[k][:200]) for k in errors}
