"""Run the pipeline without the daemon: `chipq catch-up` and `chipq catch-up --follow`.

Evaluates ``kafka_offsets_sensor`` against the persistent Dagster instance
under ``$DAGSTER_HOME``, exactly as the daemon does (the sensor keeps no
cursor of its own: Kafka and the instance hold its state), and executes each
requested run in this process, until nothing is new. The runs show in the
Dagster UI, with the same run keys and tags as the daemon's. What stays
hand-written here and why: executing requested runs in process (the daemon
would launch each in a new process), and failing runs whose catch-up process
died (Dagster's run monitoring only watches launched runs).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from chipq_pipelines.errors import ChipqError
from chipq_pipelines.local_kafka import pid_alive
from chipq_pipelines.paths import ChipqHome

INSTANCE_TEMPLATE = Path(__file__).with_name("dagster.yaml")
#: The process executing a run in ``chipq catch-up`` (to fail its runs if it dies).
PID_TAG = "chipq/catch-up-pid"
PLANNER = "kafka_offsets_sensor"
CYCLE_JOB = "pipeline_cycle"


class CatchUpError(ChipqError, RuntimeError):
    """A run failed during catch-up; its logs are in the Dagster UI."""


def ensure_dagster_home(home: ChipqHome | None = None) -> Path:
    """Create ``DAGSTER_HOME`` (default ``$CHIPQ_HOME/dagster``) with chipq's instance settings."""
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or (home or ChipqHome.from_env()).dagster_home)
    dagster_home.mkdir(parents=True, exist_ok=True)
    if not (dagster_home / "dagster.yaml").exists():
        shutil.copyfile(INSTANCE_TEMPLATE, dagster_home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dagster_home


@dataclass
class CatchUpReport:
    rounds: int = 0
    runs: dict[str, int] = field(default_factory=dict)
    records_read: int = 0
    events_inserted: int = 0
    duplicates_skipped: int = 0
    rejected: int = 0
    seconds: float = 0.0
    #: asset → the partitions the runs materialized (the mart days and lots their rows touched)
    partitions: dict[str, set[str]] = field(default_factory=dict)

    def count(self, job_name: str) -> None:
        self.runs[job_name] = self.runs.get(job_name, 0) + 1

    def add(self, other: CatchUpReport) -> None:
        """Add ``other``'s rounds, runs and counts to this report."""
        self.rounds += other.rounds
        for job, n in other.runs.items():
            self.runs[job] = self.runs.get(job, 0) + n
        self.records_read += other.records_read
        self.events_inserted += other.events_inserted
        self.duplicates_skipped += other.duplicates_skipped
        self.rejected += other.rejected
        for key, partitions in other.partitions.items():
            self.partitions.setdefault(key, set()).update(partitions)
        self.seconds += other.seconds


def recover_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Fail runs that ``chipq catch-up`` was executing when its process died, and free their pool slots.

    Hand-written because Dagster's run monitoring watches the runs a run launcher started, and
    catch-up runs are executed in process, not launched.
    """
    recovered = []
    unfinished = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.NOT_STARTED]
    for run in instance.get_runs(dg.RunsFilter(statuses=unfinished)):
        pid = int(run.tags.get(PID_TAG, "0") or 0)
        if not pid or pid_alive(pid):
            continue
        instance.report_run_failed(run, "the chipq catch-up process running it died")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        recovered.append(run.run_id)
    return recovered


def _record(report: CatchUpReport, result: dg.ExecuteInProcessResult) -> None:
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization is None:
            continue
        if materialization.partition is not None:
            key = materialization.asset_key.to_user_string()
            report.partitions.setdefault(key, set()).add(materialization.partition)
        metadata = materialization.metadata
        for name, attr in (
            ("records_read", "records_read"),
            ("events_inserted", "events_inserted"),
            ("duplicates_skipped", "duplicates_skipped"),
            ("rejected", "rejected"),
        ):
            if name in metadata:
                setattr(report, attr, getattr(report, attr) + int(metadata[name].value))  # type: ignore[arg-type]


def catch_up(
    *,
    max_rounds: int = 10_000,
    echo: Callable[[str], None] = print,
    defs: dg.Definitions | None = None,
    stop: threading.Event | None = None,
    instance: dg.DagsterInstance | None = None,
) -> CatchUpReport:
    """Evaluate the offsets sensor and execute its runs until there is no new work (or ``stop`` is set).

    ``instance`` (default: one opened from DAGSTER_HOME for this call) lets a
    long-running caller keep one open: each instance Dagster opens costs a few
    objects that are only freed at exit (alembic's schema check).
    """
    ensure_dagster_home()
    if defs is None:
        from chipq_pipelines.definitions import build_defs

        defs = build_defs()
    report = CatchUpReport()
    started = time.monotonic()

    def run() -> None:
        if instance is not None:
            _catch_up(defs, instance, report, max_rounds, echo, stop)
            return
        with dg.DagsterInstance.get() as opened:
            _catch_up(defs, opened, report, max_rounds, echo, stop)

    # Dagster tracks a "current instance" in context variables, and short-lived
    # instances can leave them pointing at collected objects. A context of its
    # own keeps that from leaking into the caller.
    contextvars.Context().run(run)
    report.seconds = time.monotonic() - started
    return report


def _catch_up(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    report: CatchUpReport,
    max_rounds: int,
    echo: Callable[[str], None],
    stop: threading.Event | None = None,
) -> None:
    for run_id in recover_orphaned_runs(instance):
        echo(f"marked run {run_id[:8]} failed: its process had died")
    sensor = defs.resolve_sensor_def(PLANNER)
    idle_rounds = 0
    for report.rounds in range(1, max_rounds + 1):
        records_before = report.records_read
        # The same evaluation the daemon makes: the sensor keeps no cursor, it reads Kafka and the instance.
        with dg.build_sensor_context(
            instance=instance, definitions=defs, sensor_name=PLANNER, resources=defs.resources
        ) as context:
            result = sensor(context)
        requests = result.run_requests if isinstance(result, dg.SensorResult) else []
        for run_request in requests or []:
            _execute(defs, instance, run_request, report, echo)
        if not requests or (stop is not None and stop.is_set()):
            break
        # Runs that read nothing, round after round, mean the plan cannot advance
        # (e.g. the landed offsets cannot be committed to the group): stop.
        idle_rounds = idle_rounds + 1 if report.records_read == records_before else 0
        if idle_rounds >= 3:
            echo("warning: the last rounds read no new records; stopping (check the logs of the last run)")
            break


def _execute(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    run_request: dg.RunRequest,
    report: CatchUpReport,
    echo: Callable[[str], None],
) -> None:
    job = defs.resolve_job_def(run_request.job_name or CYCLE_JOB)
    tags = {**(run_request.tags or {}), "dagster/sensor_name": PLANNER, PID_TAG: str(os.getpid())}
    if run_request.run_key:
        tags["dagster/run_key"] = run_request.run_key
    # The console logger at WARNING: the run's full event log is in the Dagster UI.
    run_config = {**(run_request.run_config or {}), "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    result = job.execute_in_process(run_config=run_config, instance=instance, tags=tags, raise_on_error=False)
    report.count(job.name)
    _record(report, result)
    if not result.success:
        raise CatchUpError(f"run {result.run_id} ({job.name}) failed; open it in the Dagster UI (`chipq ui`) for logs")
    echo(f"  {job.name}: run {result.run_id[:8]} ok, {report.records_read} records read so far")


@dataclass
class FollowReport:
    passes: int = 0
    failed_passes: int = 0
    total: CatchUpReport = field(default_factory=CatchUpReport)


def follow(
    *,
    interval: float = 5.0,
    stop: threading.Event,
    echo: Callable[[str], None] = print,
    max_backoff: float = 60.0,
) -> FollowReport:
    """The pipeline without the daemon: sensor rounds and their runs until ``stop`` is set.

    Each pass is one round (the offsets sensor evaluated once, its run executed);
    after a pass that did work the next one starts at once, after an idle one
    in ``interval`` seconds, so a backlog drains at full speed and every pass
    that did work prints one line. A failed pass (the broker away, a run
    failing) is reported and retried with exponential backoff up to
    ``max_backoff`` seconds; nothing is skipped, since every pass re-plans from
    the offsets landed in DuckDB.
    """
    from chipq_pipelines.definitions import build_defs

    defs = build_defs()
    summary = FollowReport()
    backoff = interval
    ensure_dagster_home()
    with dg.DagsterInstance.get() as instance:  # one for all passes (see catch_up)
        while not stop.is_set():
            try:
                report = catch_up(defs=defs, echo=lambda _line: None, stop=stop, max_rounds=1, instance=instance)
            except Exception as exc:  # the loop outlives broker restarts and failing runs
                summary.failed_passes += 1
                backoff = min(max_backoff, max(interval, backoff * 2))
                echo(f"{_now()} pass failed ({type(exc).__name__}: {str(exc)[:300]}); retrying in {backoff:.0f} s")
                stop.wait(backoff)
                continue
            summary.passes += 1
            backoff = interval
            summary.total.add(report)
            if not report.runs or report.records_read == 0:
                stop.wait(interval)
                continue
            runs = ", ".join(f"{n} {job}" for job, n in sorted(report.runs.items()))
            echo(
                f"{_now()} {report.events_inserted} events landed, {report.rejected} rejected, "
                f"{report.duplicates_skipped} duplicates skipped in {report.seconds:.1f} s ({runs})"
            )
    return summary


def _now() -> str:
    return f"{dt.datetime.now(dt.UTC):%H:%M:%S}"
