"""`chipq`: the command line of the chip-quality analytics pipeline."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from chipq_pipelines.kafka_cli import kafka, topics
from chipq_pipelines.metrics.cli import metrics
from chipq_pipelines.paths import ChipqHome


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """chipq: inspection events from Kafka into DuckDB quality marts, with Dagster.

    Local state lives under CHIPQ_HOME (default ./.chipq).

    \b
    Typical session:
      chipq kafka up            start the local Apache Kafka broker, with the platform's topics
      chipq simulate -n 20000   publish a simulated fab line (or point your services at it)
      chipq catch-up            ingest and materialize everything new
      chipq sql "SELECT * FROM marts.lot_quality_scores LIMIT 5"
      chipq kafka down          stop the broker

    On a cluster of your own: KAFKA_BOOTSTRAP_SERVERS=host:port chipq topics create
    """


# ------------------------------------------------------------- kafka, topics

main.add_command(kafka)
main.add_command(topics)
main.add_command(metrics)


# ------------------------------------------------------------------ pipeline


@main.command("catch-up")
@click.option(
    "--max-rounds",
    default=10_000,
    show_default=True,
    help="Stop after this many cycles (not with --follow); a stream that never runs dry needs it.",
)
@click.option("--follow", is_flag=True, help="Keep going until stopped: the pipeline without the Dagster daemon.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="With --follow: seconds to wait after a pass that found nothing new.",
)
def catch_up_command(max_rounds: int, follow: bool, interval: float) -> None:
    """Ingest and materialize everything new, in this process, until done.

    Evaluates kafka_offsets_sensor against the Dagster instance in DAGSTER_HOME
    (default $CHIPQ_HOME/dagster), as the daemon does, and executes the
    pipeline_cycle runs it requests (land, marts, alerts, analysts' view). The
    runs show in the Dagster UI. It can take turns with the daemon (`chipq ui`)
    on the same stream at any time.

    With --follow it keeps the pipeline running without the Dagster daemon:
    pass after pass (one sensor round each) while there is work, a look every
    --interval seconds when there is none, one line per pass that did work,
    failed passes retried with backoff. Ctrl-C or SIGTERM finishes the current
    run and exits cleanly.

    \b
    Examples:
      KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 chipq catch-up
      chipq catch-up --follow --interval 10
    """
    from chipq_pipelines.runner import CatchUpError, catch_up

    if follow:
        _follow(interval)
        return
    try:
        report = catch_up(max_rounds=max_rounds, echo=click.echo)
    except CatchUpError as exc:
        raise click.ClickException(str(exc)) from exc
    runs = ", ".join(f"{n} {job}" for job, n in sorted(report.runs.items())) or "no runs: nothing new"
    click.echo(
        f"caught up in {report.seconds:.1f} s: {report.records_read} records read, "
        f"{report.events_inserted} events landed, {report.duplicates_skipped} duplicates skipped, "
        f"{report.rejected} rejected; {runs}"
    )


def _follow(interval: float) -> None:
    import signal
    import threading

    from chipq_pipelines.runner import follow

    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        if stop.is_set():  # asked twice: stop now (a run cut short is re-planned by the next catch-up)
            raise KeyboardInterrupt
        click.echo(f"{signal.Signals(signum).name}: finishing the current run, then stopping (again: now)", err=True)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    click.echo(f"following: a pass while there is work, a look every {interval:g} s when idle (Ctrl-C to stop)")
    # The passes run in a worker thread: Dagster turns a signal that reaches the
    # main thread during a step into an interrupted run, while a stop request
    # should let the current run finish. Signals always go to the main thread.
    result: list[Any] = []
    worker = threading.Thread(
        target=lambda: result.append(follow(interval=interval, stop=stop, echo=click.echo)),
        name="chipq-follow",
        daemon=True,
    )
    worker.start()
    while worker.is_alive():
        worker.join(0.5)
    if not result:
        raise click.ClickException("the follow loop ended with an error (see above)")
    summary = result[0]
    total = summary.total
    click.echo(
        f"stopped after {summary.passes} passes ({summary.failed_passes} failed): "
        f"{total.events_inserted} events landed, {total.rejected} rejected, "
        f"{total.duplicates_skipped} duplicates skipped"
    )


@main.command("sql")
@click.argument("query")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="table: aligned, for reading; csv and json: values exactly as stored, for files and programs.",
)
@click.option(
    "--snapshot", type=click.Path(dir_okay=False), help="Snapshot file (default $CHIPQ_HOME/analytics.duckdb)."
)
@click.option(
    "--memory-limit",
    help="DuckDB memory for the query (e.g. 2GB, or 25% of RAM); beyond it DuckDB spills to disk. "
    "[default: $CHIPQ_SQL_MEMORY_LIMIT, else 25%]",
)
@click.option(
    "--temp-limit",
    help="Cap on what the query may spill under $CHIPQ_HOME/tmp; a query that needs more fails (0B: never spill). "
    "[default: $CHIPQ_SQL_TEMP_LIMIT, else 4GB]",
)
def sql_command(query: str, fmt: str, snapshot: str | None, memory_limit: str | None, temp_limit: str | None) -> None:
    """Query the analysts' read-only snapshot of the warehouse.

    Read-only, in UTC, no access to other files; memory and temporary disk are
    capped (--memory-limit, --temp-limit). In tables, control characters in
    values (ANSI escapes in a lot id, say) are shown escaped, e.g. \\x1b.

    \b
    Examples:
      chipq sql "SELECT * FROM marts.lot_quality_scores ORDER BY mean_quality_score LIMIT 10"
      chipq sql "SELECT event_date, defect_type, defect_rate FROM marts.defect_rates" --format csv > rates.csv
      chipq sql "SELECT lot_id, count(*) FROM raw.inspection_events GROUP BY 1" --memory-limit 8GB
    """
    import dataclasses

    import duckdb

    from chipq_pipelines.warehouse.formatting import format_result
    from chipq_pipelines.warehouse.reader_limits import ReaderLimits
    from chipq_pipelines.warehouse.snapshot import query_snapshot

    path = Path(snapshot) if snapshot else ChipqHome.from_env().analyst_snapshot
    if not path.exists():
        raise click.ClickException(
            f"no analyst snapshot at {path} yet: run `chipq catch-up` (or let the Dagster daemon run) first"
        )
    limits = ReaderLimits.from_env()
    limits = dataclasses.replace(
        limits,
        memory_limit=memory_limit or limits.memory_limit,
        max_temp_directory_size=temp_limit or limits.max_temp_directory_size,
    )
    try:
        frame = query_snapshot(path, query, limits=limits)
    except duckdb.Error as exc:
        raise click.ClickException(f"query failed: {exc}") from exc
    # Escapes in values are the data: click must not strip them from a file; on a terminal they are shown escaped.
    click.echo(format_result(frame, fmt, terminal=sys.stdout.isatty()), color=True)  # type: ignore[arg-type]


@main.command("alerts")
@click.option("--limit", default=20, show_default=True, help="How many of the newest violations.")
@click.option("--level", type=click.Choice(["WARNING", "CRITICAL"]), default=None, help="Only this alert level.")
@click.option("--rule", default=None, help="Only this rule (e.g. lot_mean_score).")
@click.option(
    "--snapshot", type=click.Path(dir_okay=False), help="Snapshot file (default $CHIPQ_HOME/analytics.duckdb)."
)
def alerts_command(limit: int, level: str | None, rule: str | None, snapshot: str | None) -> None:
    """List recent threshold violations (what was published as THRESHOLD_VIOLATED).

    \b
    Example:
      chipq alerts --level CRITICAL --limit 10
    """
    from chipq_pipelines.alerts.listing import format_alerts, recent_alerts

    path = Path(snapshot) if snapshot else ChipqHome.from_env().analyst_snapshot
    try:
        frame = recent_alerts(path, limit=limit, level=level, rule=rule)
    except FileNotFoundError as exc:
        raise click.ClickException(f"{exc}: run `chipq catch-up` (or `make demo`) first") from exc
    click.echo(format_alerts(frame))
    from chipq_pipelines.checks.gaps import list_gaps

    gaps = list_gaps(path)
    if not gaps.empty:
        click.echo(
            f"\n{int(gaps['records'].sum())} records in {len(gaps)} offset gaps were deleted from Kafka before they "
            "landed (unacknowledged): see `chipq gaps`",
            err=True,
        )


@main.group("gaps", invoke_without_command=True)
@click.option("--all", "show_all", is_flag=True, help="Show acknowledged gaps too.")
@click.option(
    "--snapshot", type=click.Path(dir_okay=False), help="Snapshot file (default $CHIPQ_HOME/analytics.duckdb)."
)
@click.pass_context
def gaps_group(ctx: click.Context, show_all: bool, snapshot: str | None) -> None:
    """List records deleted from Kafka before they landed (ops.offset_gaps).

    Retention (or AdminClient.delete_records) can remove records the pipeline has
    not read yet, for example after a long outage. Ingest records each such range,
    and the kafka_offsets_reconciled check fails until someone acknowledges it.

    \b
    Examples:
      chipq gaps
      chipq gaps ack chip-quality.inspection.events 3 --note "lot data replayed from MES"
    """
    if ctx.invoked_subcommand is not None:
        return
    from chipq_pipelines.checks.gaps import format_gaps, list_gaps

    path = _snapshot_path(snapshot)
    click.echo(format_gaps(list_gaps(path, include_acknowledged=show_all)))


@gaps_group.command("ack")
@click.argument("topic")
@click.argument("partition", type=int)
@click.option(
    "--first-offset", type=int, default=None, help="Only the gap starting here (default: all of the partition)."
)
@click.option("--note", required=True, help="Why the loss is accepted, or what was done (e.g. replayed from the MES).")
@click.option("--by", default=None, help="Who acknowledges (default: the login name).")
@click.option(
    "--timeout", default=60.0, show_default=True, help="Seconds to wait while a pipeline run holds the warehouse."
)
def gaps_ack(topic: str, partition: int, first_offset: int | None, note: str, by: str | None, timeout: float) -> None:
    """Acknowledge the gaps of one topic partition, so the reconciliation check passes again."""
    import os

    from chipq_pipelines.checks.gaps import GapAcknowledgementError, acknowledge_gaps

    home = ChipqHome.from_env()
    warehouse = Path(os.environ.get("CHIPQ_WAREHOUSE") or home.warehouse)
    try:
        done = acknowledge_gaps(
            warehouse, _snapshot_path(None), topic=topic, partition=partition, first_offset=first_offset,
            note=note, by=by, timeout_s=timeout,
        )  # fmt: skip
    except GapAcknowledgementError as exc:
        raise click.ClickException(str(exc)) from exc
    for first, last in done:
        click.echo(f"acknowledged {topic}[{partition}] offsets {first}..{last} ({last - first + 1} records)")


def _snapshot_path(option: str | None) -> Path:
    """The analysts' view: --snapshot, else $CHIPQ_ANALYST_SNAPSHOT, else $CHIPQ_HOME/analytics.duckdb."""
    import os

    path = Path(option or os.environ.get("CHIPQ_ANALYST_SNAPSHOT") or ChipqHome.from_env().analyst_snapshot)
    if not path.exists():
        raise click.ClickException(
            f"no analyst snapshot at {path} yet: run `chipq catch-up` (or let the Dagster daemon run) first"
        )
    return path


@main.command("report")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("report.html"), show_default=True)
@click.option("--snapshot", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Snapshot file.")
def report_command(out: Path, snapshot: Path | None) -> None:
    """Write a self-contained HTML quality report.

    A defect Pareto, daily defect-rate trends per type and a lot-score control
    chart with its SPC limits and the flagged lots, from the analyst snapshot.
    """
    from chipq_pipelines.report import ReportError, build_report

    try:
        path = build_report(snapshot or ChipqHome.from_env().analyst_snapshot, out)
    except ReportError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {path}")


@main.command("ui")
@click.option("--port", default=3000, show_default=True, help="Port of the Dagster webserver.")
def ui_command(port: int) -> None:
    """Start the Dagster UI and daemon (`dagster dev`) on this workspace.

    Sensors run by themselves: new events reach the marts without catch-up.
    """
    import os
    import subprocess

    from chipq_pipelines.paths import REPO_ROOT
    from chipq_pipelines.runner import ensure_dagster_home

    ensure_dagster_home()
    dagster = Path(sys.executable).with_name("dagster")
    click.echo(f"Dagster UI on http://127.0.0.1:{port} (DAGSTER_HOME={os.environ['DAGSTER_HOME']}); Ctrl-C stops it")
    raise SystemExit(subprocess.call([str(dagster), "dev", "-w", str(REPO_ROOT / "workspace.yaml"), "-p", str(port)]))


# ---------------------------------------------------------------- producing


@main.command("simulate")
@click.option("--events", "-n", type=click.IntRange(min=2), default=100_000, show_default=True, help="Events to send.")
@click.option("--seed", type=int, default=42, show_default=True, help="Same seed, same stream.")
@click.option("--lots", type=click.IntRange(min=1), default=None, help="Lots to spread them over [one per 400 events].")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None, help="Pace: records per second.")
@click.option("--truth", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write ground truth here.")
@click.option("--start", type=click.DateTime(), default=None, help="UTC start of the stream [ends this hour].")
@click.option(
    "--topic",
    default=None,
    help="Topic to publish to (created when missing) [default: $CHIPQ_INSPECTION_TOPIC, the one the pipeline "
    "reads, else chip-quality.inspection.events].",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def simulate_cmd(
    events: int,
    seed: int,
    lots: int | None,
    rate: float | None,
    truth: Path | None,
    start,
    topic: str | None,
    no_progress: bool,
) -> None:
    """Publish a realistic fab event stream: lots, wafer maps, excursions and mess.

    Lots of 25 wafers through stations and inspection types, WM-811K wafer-map
    patterns, clustered defects, duplicates, out-of-order and late events and a
    few poison records; excursions (drifting station, particle, scratch) with
    their ground truth in --truth.

    \b
    Example:
      chipq simulate --events 20000 --seed 7 --truth truth.json
    """
    from chipq_pipelines.events.errors import EventsError
    from chipq_pipelines.simulate import simulate_command

    try:
        simulate_command(events, seed, lots, rate, truth, start, topic=topic, progress=not no_progress, echo=click.echo)
    except (ValueError, EventsError) as exc:
        raise click.ClickException(str(exc)) from exc


@main.command("processor")
@click.option(
    "--health-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve /livez and /readyz (JSON, for Kubernetes probes) on this port, on all interfaces.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve the consumers' counters and lag to Prometheus on http://ADDR:PORT/metrics.",
)
@click.option(
    "--metrics-addr",
    default="127.0.0.1",
    show_default=True,
    help="Address of the metrics endpoint (0.0.0.0 in a container that Prometheus scrapes from outside).",
)
def processor_cmd(health_port: int | None, metrics_port: int | None, metrics_addr: str) -> None:
    """Run the guide's EventProcessorService (analytics + notification consumers).

    Consumes with KAFKA_BOOTSTRAP_SERVERS until SIGTERM or Ctrl-C, then commits
    and leaves the consumer groups. Alerts go to the log, or to
    CHIPQ_ALERT_WEBHOOK_URL / CHIPQ_ALERT_JSONL when set. With --health-port,
    /livez (the event loop answers) and /readyz (consumers started, Kafka
    answers) return 200 or 503 with the facts as JSON.

    With --metrics-port, /metrics serves per consumer group the counters of
    get_metrics() (chipq_consumer_messages_consumed_total, ..._processed_total,
    ..._failed_total, ..._dead_lettered_total, ...) and the lag per partition
    (chipq_consumer_lag_records{group,topic,partition}); docs/monitoring.md lists them.

    \b
    Example:
      chipq processor --metrics-port 9464 --health-port 8080
    """
    from chipq_pipelines.events.errors import ConfigError
    from chipq_pipelines.events.processor import run_processor

    try:
        run_processor(health_port=health_port, metrics_port=metrics_port, metrics_addr=metrics_addr)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command("demo")
@click.option("--events", "-n", type=click.IntRange(min=2), default=100_000, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--port", type=int, default=None, help="Broker port [9092, or a free one if busy].")
def demo_cmd(events: int, seed: int, port: int | None) -> None:
    """The main job, end to end: Kafka, a simulated day of a fab line, the pipeline, findings.

    Starts the local broker, publishes the simulated stream, runs every sensor
    and run in process until done, prints the headline figures (events landed
    and rejected, worst lots, violations, excursions caught) and stops the
    broker it started. The warehouse, snapshot and Dagster runs stay under
    CHIPQ_HOME for `chipq ui` and `chipq sql`.
    """
    from chipq_pipelines.demo import run_demo
    from chipq_pipelines.local_kafka import LocalKafkaError
    from chipq_pipelines.runner import CatchUpError

    try:
        run_demo(events=events, seed=seed, port=port, echo=click.echo)
    except (LocalKafkaError, CatchUpError) as exc:
        raise click.ClickException(str(exc)) from exc


@main.command("dagster-home")
@click.option(
    "--storage",
    type=click.Choice(["sqlite", "postgres"]),
    default=None,
    help="Write chipq's dagster.yaml with this storage (postgres: connection from DAGSTER_PG_*).",
)
def dagster_home_cmd(storage: str | None) -> None:
    """Show or choose where Dagster keeps runs, events, schedules and pools: SQLite or PostgreSQL.

    Without --storage: print DAGSTER_HOME and its storage (creating chipq's dagster.yaml, SQLite,
    if there is none). --storage postgres writes the same settings with PostgreSQL storage whose
    connection Dagster reads from DAGSTER_PG_HOST, DAGSTER_PG_PORT, DAGSTER_PG_USER,
    DAGSTER_PG_PASSWORD and DAGSTER_PG_DB each time it opens the instance; the file is swapped
    in only after Dagster has connected and created its tables. Runs recorded in the previous
    storage stay there and are not shown in the new one.

    \b
    Example:
      export DAGSTER_PG_HOST=db.fab.local DAGSTER_PG_PORT=5432 DAGSTER_PG_USER=dagster \\
             DAGSTER_PG_PASSWORD=... DAGSTER_PG_DB=dagster
      chipq dagster-home --storage postgres
    """
    import os

    from chipq_pipelines.dagster_storage import DagsterStorageError, storage_of, write_instance
    from chipq_pipelines.runner import ensure_dagster_home

    dagster_home = ensure_dagster_home()
    before = storage_of(dagster_home)
    if storage is not None:
        try:
            write_instance(dagster_home, storage)  # type: ignore[arg-type]
        except DagsterStorageError as exc:
            raise click.ClickException(str(exc)) from exc
    now = storage_of(dagster_home)
    where = ""
    if now == "postgres":
        where = f" (database {os.environ.get('DAGSTER_PG_DB')} at {os.environ.get('DAGSTER_PG_HOST')}:"
        where += f"{os.environ.get('DAGSTER_PG_PORT')})"
    click.echo(f"DAGSTER_HOME {dagster_home}: runs, events, schedules and pools in {now}{where}")
    if now != before:
        click.echo(f"switched from {before}: runs recorded there stay there and are not shown here")


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
