"""Drive the sensors and their runs in process: `chipq catch-up`.

Evaluates the offset planners and the mart partition sensor against the
persistent Dagster instance under ``$DAGSTER_HOME`` and executes each
requested run in this process, until no sensor has new work. The runs show
in the Dagster UI afterwards, exactly as if the daemon had launched them.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from dagster._core.storage.defs_state.base import set_defs_state_storage

from chipq_pipelines.local_kafka import pid_alive
from chipq_pipelines.paths import ChipqHome

INSTANCE_TEMPLATE = Path(__file__).with_name("dagster.yaml")
CURSOR_FILE = "chipq-catch-up-cursors.json"
DRIVER_TAG = "chipq/driver"
PID_TAG = "chipq/pid"


class CatchUpError(RuntimeError):
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
        self.seconds += other.seconds


def recover_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Fail catch-up runs whose process died (killed mid-run) and free their pool slots."""
    recovered = []
    unfinished = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.NOT_STARTED]
    for run in instance.get_runs(dg.RunsFilter(statuses=unfinished, tags={DRIVER_TAG: "catch-up"})):
        pid = int(run.tags.get(PID_TAG, "0") or 0)
        if pid and pid_alive(pid):
            continue
        instance.report_run_failed(run, "the catch-up process running it died")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        recovered.append(run.run_id)
    return recovered


def _succeeded(instance: dg.DagsterInstance, run_key: str) -> bool:
    runs = instance.get_runs(
        dg.RunsFilter(tags={"dagster/run_key": run_key}, statuses=[dg.DagsterRunStatus.SUCCESS]), limit=1
    )
    return bool(runs)


def _record(report: CatchUpReport, result: dg.ExecuteInProcessResult) -> None:
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization is None:
            continue
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
    """Evaluate sensors and execute their runs until there is no new work (or ``stop`` is set between rounds).

    ``instance`` (default: one opened from DAGSTER_HOME for this call) lets a
    long-running caller keep one open: each instance Dagster opens costs a few
    objects that are only freed at exit (alembic's schema check).
    """
    dagster_home = ensure_dagster_home()
    if defs is None:
        from chipq_pipelines.definitions import build_defs

        defs = build_defs()
    report = CatchUpReport()
    started = time.monotonic()

    def run() -> None:
        if instance is not None:
            _catch_up(defs, instance, dagster_home, report, max_rounds, echo, stop)
            return
        with dg.DagsterInstance.get() as opened:
            _catch_up(defs, opened, dagster_home, report, max_rounds, echo, stop)

    # Dagster tracks a "current instance" in context variables, and short-lived
    # instances can leave them pointing at collected objects. A context of its
    # own keeps that from leaking into the caller.
    contextvars.Context().run(run)
    report.seconds = time.monotonic() - started
    return report


def _catch_up(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    dagster_home: Path,
    report: CatchUpReport,
    max_rounds: int,
    echo: Callable[[str], None],
    stop: threading.Event | None = None,
) -> None:
    for run_id in recover_orphaned_runs(instance):
        echo(f"marked run {run_id[:8]} failed: its process had died")
    # Resolve the repository once, up front, with no definitions-state storage:
    # chipq has no state-backed definitions, and the storage Dagster tracks as
    # "current" can belong to a short-lived instance (each sensor context makes
    # one) that is already collected, which fails the load intermittently.
    with set_defs_state_storage(None):
        defs.get_repository_def()
    cursor_path = dagster_home / CURSOR_FILE
    cursors: dict[str, str | None] = json.loads(cursor_path.read_text()) if cursor_path.exists() else {}
    sensor_names = [sensor.name for sensor in defs.sensors or []]
    idle_rounds = 0
    for report.rounds in range(1, max_rounds + 1):
        executed: list[str] = []
        records_before = report.records_read
        for name in sensor_names:
            sensor = defs.resolve_sensor_def(name)
            with dg.build_sensor_context(
                instance=instance,  # this one, not a new instance per evaluation (see catch_up)
                instance_ref=instance.get_ref(),  # Dagster loads partitions only when a ref is set
                cursor=cursors.get(name),
                definitions=defs,
                sensor_name=name,
                resources=defs.resources,
            ) as context:  # opens (and closes) the resources the sensor uses
                data = sensor.evaluate_tick(context)
            for request in data.dynamic_partitions_requests or []:
                if isinstance(request, dg.AddDynamicPartitionsRequest):
                    instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            for run_request in data.run_requests or []:
                if run_request.run_key and _succeeded(instance, run_request.run_key):
                    continue
                _execute(defs, instance, name, run_request, report, echo)
                executed.append(run_request.job_name or "")
            cursors[name] = data.cursor
            cursor_path.write_text(json.dumps(cursors))
        if not executed or (stop is not None and stop.is_set()):
            break
        # Ingest runs that read nothing, round after round, mean the plan cannot
        # advance (e.g. the landed offsets cannot be committed to the group): stop.
        only_empty_ingests = _only_empty_ingests(executed, report.records_read - records_before)
        idle_rounds = idle_rounds + 1 if only_empty_ingests else 0
        if idle_rounds >= 3:
            echo("warning: the last rounds read no new records; stopping (check the logs of the last ingest run)")
            break


def _only_empty_ingests(jobs: list[str], records_read: int) -> bool:
    """Runs that did nothing: ingest runs that read no record (and the snapshot refresh after them)."""
    return records_read == 0 and all(job.startswith("ingest") or job == "publish_analyst_snapshot" for job in jobs)


def _execute(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    sensor_name: str,
    run_request: dg.RunRequest,
    report: CatchUpReport,
    echo: Callable[[str], None],
) -> None:
    job_name = run_request.job_name
    assert job_name, "every chipq sensor names the job of its requests"
    job = defs.resolve_job_def(job_name)
    tags = {
        **(run_request.tags or {}),
        "dagster/sensor_name": sensor_name,
        DRIVER_TAG: "catch-up",
        PID_TAG: str(os.getpid()),
    }
    if run_request.run_key:
        tags["dagster/run_key"] = run_request.run_key
    # The console logger at WARNING: the run's full event log is in the Dagster UI.
    run_config = {**(run_request.run_config or {}), "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    result = job.execute_in_process(
        run_config=run_config,
        instance=instance,
        partition_key=run_request.partition_key,
        tags=tags,
        raise_on_error=False,
    )
    report.count(job_name)
    _record(report, result)
    label = f"{job_name}" + (f" [{run_request.partition_key}]" if run_request.partition_key else "")
    if not result.success:
        raise CatchUpError(f"run {result.run_id} ({label}) failed; open it in the Dagster UI (`chipq ui`) for logs")
    if job_name.startswith("ingest"):
        echo(f"  {label}: run {result.run_id[:8]} ok, {report.records_read} records read so far")
    else:
        echo(f"  {label}: run {result.run_id[:8]} ok")


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

    Each pass is one round (every sensor evaluated once, its runs executed);
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
            jobs = [job for job, n in report.runs.items() for _ in range(n)]
            if not jobs or _only_empty_ingests(jobs, report.records_read):
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
