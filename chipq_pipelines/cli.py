"""`chipq`: the command line of the chip-quality analytics pipeline."""

from __future__ import annotations

import sys

import click

from chipq_pipelines.local_kafka import LocalKafka, LocalKafkaError, kafka_version
from chipq_pipelines.paths import ChipqHome


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """chipq: inspection events from Kafka into DuckDB quality marts, with Dagster.

    Local state lives under CHIPQ_HOME (default ./.chipq).

    \b
    Typical session:
      chipq kafka up            start the local Apache Kafka broker
      chipq catch-up            ingest and materialize everything new
      chipq sql "SELECT * FROM marts.lot_quality_scores LIMIT 5"
      chipq kafka down          stop the broker
    """


# ---------------------------------------------------------------------- kafka


@main.group()
def kafka() -> None:
    """Run a local Apache Kafka 4.x broker (KRaft) on 127.0.0.1."""


_port_option = click.option("--port", default=9092, show_default=True, help="Broker port on 127.0.0.1.")


@kafka.command("up")
@_port_option
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for the broker to answer.")
def kafka_up(port: int, timeout: float) -> None:
    """Fetch the Kafka jars (once), format storage (once) and start the broker."""
    broker = LocalKafka.for_port(port)
    try:
        started = broker.start(timeout=timeout)
    except LocalKafkaError as exc:
        raise click.ClickException(str(exc)) from exc
    if started:
        click.echo(f"Kafka {kafka_version(broker.lib_dir)} is up at {broker.bootstrap} (pid {broker.pid()})")
    else:
        click.echo(f"Kafka already runs at {broker.bootstrap} (pid {broker.pid()}); nothing to do")
    click.echo(f"export KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}")


@kafka.command("down")
@_port_option
def kafka_down(port: int) -> None:
    """Stop the broker started by `chipq kafka up` (SIGTERM, then SIGKILL)."""
    broker = LocalKafka.for_port(port)
    if broker.stop():
        click.echo(f"Kafka at {broker.bootstrap} stopped")
    else:
        click.echo(f"no chipq broker was running at {broker.bootstrap}")


@kafka.command("status")
@_port_option
def kafka_status(port: int) -> None:
    """Exit 0 and print the bootstrap address when the broker runs."""
    broker = LocalKafka.for_port(port)
    if broker.is_running():
        click.echo(f"running {broker.bootstrap} (pid {broker.pid()}, log {broker.log_file})")
        return
    click.echo(f"not running at {broker.bootstrap}; start it with `chipq kafka up --port {port}`", err=True)
    sys.exit(1)


@main.command("home")
def home() -> None:
    """Print where chipq keeps its local state."""
    paths = ChipqHome.from_env()
    click.echo(f"CHIPQ_HOME      {paths.root}")
    click.echo(f"kafka jars      {paths.kafka_lib}")
    click.echo(f"warehouse       {paths.warehouse}")
    click.echo(f"analyst snapshot {paths.analyst_snapshot}")
    click.echo(f"DAGSTER_HOME    {paths.dagster_home}")


if __name__ == "__main__":
    main()
