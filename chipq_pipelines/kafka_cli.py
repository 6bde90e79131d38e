"""`chipq kafka …` (local brokers) and `chipq topics …` (the platform's topics on any cluster)."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import click

from chipq_pipelines.local_cluster import MAX_NODES, LocalKafkaCluster
from chipq_pipelines.local_kafka import LocalKafka, LocalKafkaError, kafka_version, stop_brokers
from chipq_pipelines.paths import ChipqHome

if TYPE_CHECKING:
    from chipq_pipelines.events.config import KafkaConfig
    from chipq_pipelines.events.topic_admin import CreateResult
    from chipq_pipelines.events.topics import DeclaredTopics, TopicSpec


# ---------------------------------------------------------------------- kafka


@click.group()
def kafka() -> None:
    """Run local Apache Kafka 4.x brokers (KRaft) on 127.0.0.1, under $CHIPQ_HOME/kafka.

    \b
    Examples:
      chipq kafka up                    broker on 127.0.0.1:9092, with the platform's topics
      chipq kafka up --port 19092       another one (its own folder, kafka/broker-19092)
      chipq kafka up --brokers 3        a 3-node cluster on 9092-9094 (replication 3, min.insync.replicas 2)
      chipq kafka status                every broker of this CHIPQ_HOME
      chipq kafka down                  stop them all (--port N: only that one)
    """


_port_option = click.option("--port", default=9092, show_default=True, help="Broker port on 127.0.0.1.")
_any_port_option = click.option(
    "--port", type=int, default=None, help="Only the broker on this port [default: every broker of this CHIPQ_HOME]."
)


def _brokers(port: int | None) -> list[LocalKafka]:
    return [LocalKafka.for_port(port)] if port is not None else LocalKafka.all_in()


@kafka.command("up")
@_port_option
@click.option(
    "--brokers",
    type=click.IntRange(1, MAX_NODES),
    default=None,
    help="Nodes: 1, or a KRaft cluster of N broker+controller nodes on --port and the N-1 ports after it "
    "[default: as the broker on --port was first started, else 1].",
)
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for the broker(s) to answer.")
@click.option("--no-topics", is_flag=True, help="Create no topics (a bare broker; `chipq topics create` later).")
def kafka_up(port: int, brokers: int | None, timeout: float, no_topics: bool) -> None:
    """Start a broker (or a cluster) and create the platform's topics on it.

    Fetches the Kafka jars from Maven Central (once), formats storage (once),
    starts the broker and creates the topics declared in topics.yaml that it
    lacks (event topics and their dead-letter topics). On one broker they get
    replication factor 1; with --brokers 3 the nodes share one cluster id and
    one controller quorum, and topics (internal ones too) get replication
    factor 3 and min.insync.replicas=2, so writes go on while one node is down.
    Brokers never create topics on first use. Running it again is harmless: it
    says what already runs and what already exists, and starts any node that
    is down (with its data).
    """
    from chipq_pipelines.events.config import KafkaConfig
    from chipq_pipelines.events.errors import EventsError

    broker = LocalKafka.for_port(port)
    try:
        cluster = LocalKafkaCluster.of(broker)
        if cluster is None and brokers not in (None, 1):
            cluster = LocalKafkaCluster.plan(port, brokers)
        if cluster is not None and brokers not in (None, cluster.size):
            raise LocalKafkaError(
                f"127.0.0.1:{port} is a node of the {cluster.size}-node cluster on {cluster.bootstrap}, "
                f"not of a {brokers}-node one: run `chipq kafka up --port {cluster.nodes[0].port}` for it, "
                f"or pick another --port"
            )
        if cluster is not None:
            bootstrap = cluster.bootstrap
            started = cluster.start(timeout=timeout)
            nodes = ", ".join(f"node {n.node_id} pid {n.pid()}" for n in cluster.nodes)
            if started:
                version = kafka_version(broker.lib_dir)
                again = (
                    ""
                    if len(started) == cluster.size
                    else f"; started node {', '.join(str(n.node_id) for n in started)}"
                )
                click.echo(f"Kafka {version} is up: {cluster.size} brokers at {bootstrap} ({nodes}){again}")
            else:
                click.echo(f"Kafka already runs: {cluster.size} brokers at {bootstrap} ({nodes}); nothing to do")
        else:
            bootstrap = broker.bootstrap
            if broker.start(timeout=timeout):
                click.echo(f"Kafka {kafka_version(broker.lib_dir)} is up at {bootstrap} (pid {broker.pid()})")
            else:
                click.echo(f"Kafka already runs at {bootstrap} (pid {broker.pid()}); nothing to do")
    except LocalKafkaError as exc:
        raise click.ClickException(str(exc)) from exc
    if not no_topics:
        try:
            _create(KafkaConfig(bootstrap_servers=bootstrap), _declared(None), None)
        except EventsError as exc:
            raise click.ClickException(f"the broker runs, but creating the topics failed: {exc}") from exc
    click.echo(f"export KAFKA_BOOTSTRAP_SERVERS={bootstrap}")


@kafka.command("down")
@_any_port_option
def kafka_down(port: int | None) -> None:
    """Stop the brokers started by `chipq kafka up` (SIGTERM, then SIGKILL); their data is kept."""
    stopped = stop_brokers(_brokers(port))  # all at once: a cluster's quorum must outlive its nodes' shutdown
    for broker in stopped:
        click.echo(f"Kafka at {broker.bootstrap} stopped")
    if not stopped:
        where = f"at 127.0.0.1:{port}" if port is not None else f"under {ChipqHome.from_env().root}"
        click.echo(f"no chipq broker was running {where}")


def _node(broker: LocalKafka) -> str:
    quorum = broker.quorum
    return f"node {broker.node_id} of {len(quorum)}, " if quorum else ""


@kafka.command("status")
@_any_port_option
def kafka_status(port: int | None) -> None:
    """Print each broker of this CHIPQ_HOME; exit 0 when at least one runs, else 1.

    The last line is the KAFKA_BOOTSTRAP_SERVERS of the running ones.
    """
    running = []
    for broker in _brokers(port):
        if broker.is_running():
            running.append(broker)
            click.echo(f"running {broker.bootstrap} ({_node(broker)}pid {broker.pid()}, log {broker.log_file})")
        elif broker.instance_dir.exists():
            click.echo(f"stopped {broker.bootstrap} ({_node(broker)}{broker.instance_dir})")
    if running:
        click.echo(f"export KAFKA_BOOTSTRAP_SERVERS={','.join(broker.bootstrap for broker in running)}")
        return
    hint = f"chipq kafka up --port {port}" if port is not None else "chipq kafka up"
    where = f"at 127.0.0.1:{port}" if port is not None else f"under {ChipqHome.from_env().root}"
    click.echo(f"not running: no chipq broker {where}; start one with `{hint}`", err=True)
    sys.exit(1)


# --------------------------------------------------------------------- topics


@click.group()
def topics() -> None:
    """The platform's Kafka topics, as declared in topics.yaml, on any cluster.

    The cluster is KAFKA_BOOTSTRAP_SERVERS (or --bootstrap-servers); the
    KAFKA_SASL_* / KAFKA_SECURITY_PROTOCOL variables apply as everywhere.
    Declared: chip-quality.inspection.events, chip-quality.quality.events and
    their dead-letter topics (<topic>.dlq), with partitions, replication and
    retention. A cluster with fewer brokers than the declared replication
    factor gets one replica per broker, unless --replication-factor says otherwise.

    \b
    Examples:
      chipq topics create                                   what the cluster lacks
      chipq topics describe                                 declared vs actual, mismatches flagged
      chipq topics create --bootstrap-servers kafka:29092 --replication-factor 3
    """


_bootstrap_option = click.option(
    "--bootstrap-servers",
    envvar="KAFKA_BOOTSTRAP_SERVERS",
    default="127.0.0.1:9092",
    show_default=True,
    show_envvar=True,
    help="The cluster (host:port[,host:port...]).",
)
_replication_option = click.option(
    "--replication-factor",
    type=click.IntRange(min=1),
    default=None,
    help="Replicas per partition [default: the declared one, at most one per broker of the cluster].",
)
_file_option = click.option(
    "--file",
    "topics_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Topics file [default: chipq_pipelines/events/topics.yaml, the platform's].",
)


def _kafka_config(bootstrap_servers: str) -> KafkaConfig:
    from chipq_pipelines.events.config import KafkaConfig
    from chipq_pipelines.events.errors import ConfigError

    try:
        settings = KafkaConfig.from_env().model_dump()
        return KafkaConfig(**{**settings, "bootstrap_servers": bootstrap_servers})
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _declared(topics_file: Path | None) -> DeclaredTopics:
    from chipq_pipelines.events.errors import TopicsFileError
    from chipq_pipelines.events.topics import load_topics

    try:
        return load_topics(topics_file)
    except TopicsFileError as exc:
        raise click.ClickException(str(exc)) from exc


def _settings(spec: TopicSpec) -> str:
    config = ", ".join(f"{key}={value}" for key, value in spec.config.items())
    return f"{spec.partitions} partitions, replication {spec.replication_factor}" + (f", {config}" if config else "")


def _create(config: KafkaConfig, declared: DeclaredTopics, replication_factor: int | None) -> CreateResult:
    from chipq_pipelines.events.topic_admin import create_topics
    from chipq_pipelines.events.topics import replication_factor_for

    result = create_topics(config, declared.topics, replication_factor=replication_factor)
    for spec in declared.topics:
        on_cluster = spec.with_replication(
            replication_factor_for(spec.replication_factor, result.brokers, replication_factor)
        )
        if spec.name in result.created:
            click.echo(f"  created {spec.name} ({_settings(on_cluster)})")
        else:
            click.echo(f"  exists  {spec.name} (left as it is; `chipq topics describe` compares it)")
    lowered = sorted(
        {s.name for s in declared.topics if replication_factor is None and s.replication_factor > result.brokers}
    )
    if lowered:
        click.echo(
            f"  the cluster has {result.brokers} broker(s): {len(lowered)} topic(s) got {result.brokers} replica(s) "
            "instead of the declared replication factor"
        )
    click.echo(f"topics: {len(result.created)} created, {len(result.existing)} already there ({declared.path})")
    return result


@topics.command("create")
@_bootstrap_option
@_replication_option
@_file_option
def topics_create(bootstrap_servers: str, replication_factor: int | None, topics_file: Path | None) -> None:
    """Create the declared topics the cluster lacks (idempotent; existing ones are not changed)."""
    from chipq_pipelines.events.errors import EventsError

    try:
        _create(_kafka_config(bootstrap_servers), _declared(topics_file), replication_factor)
    except EventsError as exc:
        raise click.ClickException(str(exc)) from exc


def _cell(exists: bool, actual: object, wanted: object) -> str:
    if not exists:
        return "-"
    return str(actual) if actual == wanted else f"{actual} (declared {wanted})"


@topics.command("describe")
@_bootstrap_option
@_replication_option
@_file_option
def topics_describe(bootstrap_servers: str, replication_factor: int | None, topics_file: Path | None) -> None:
    """Show each declared topic on the cluster next to its declaration; exit 1 on any difference.

    Columns: partitions, replication and every declared config (retention.ms,
    min.insync.replicas, ...), each as the cluster has it; a value that differs
    reads `actual (declared X)`. Status: ok, MISMATCH or MISSING.
    """
    from chipq_pipelines.events.errors import EventsError
    from chipq_pipelines.events.topic_admin import describe_topics

    declared = _declared(topics_file)
    try:
        states, brokers = describe_topics(
            _kafka_config(bootstrap_servers), declared.topics, replication_factor=replication_factor
        )
    except EventsError as exc:
        raise click.ClickException(str(exc)) from exc
    keys = list(dict.fromkeys(key for spec in declared.topics for key in spec.config))
    header = ["topic", "partitions", "replication", *keys, "status"]
    rows = []
    for state in states:
        expected = state.expected
        cell = partial(_cell, state.exists)
        status = "ok" if not state.differences else ("MISSING" if not state.exists else "MISMATCH")
        rows.append(
            [
                expected.name,
                cell(state.partitions, expected.partitions),
                cell(state.replication_factor, expected.replication_factor),
                *(cell(state.config.get(key, "unset"), expected.config.get(key, "unset")) for key in keys),
                status,
            ]
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip())
    click.echo(f"cluster {bootstrap_servers}: {brokers} broker(s); declared in {declared.path}")
    if any(state.differences for state in states):
        click.echo(
            "differences found: `chipq topics create` creates missing topics; it does not change existing ones "
            "(kafka-topics --alter for partitions, kafka-configs --alter for config)",
            err=True,
        )
        sys.exit(1)
