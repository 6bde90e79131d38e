"""`chipq demo` (the README's first command): a day of a small fab line, end to end.

Starts the local Kafka broker (unless one answers already), simulates about
100k inspection events with excursions, runs the whole pipeline in process
(ingest → marts → alerts → snapshot), and prints what a quality engineer
wants to see first. It stops what it started: nothing is left running.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from chipq_pipelines.local_kafka import LocalKafka, free_port, port_is_free
from chipq_pipelines.paths import ChipqHome
from chipq_pipelines.warehouse.formatting import markdown_table
from chipq_pipelines.warehouse.snapshot import query_snapshot

DEFAULT_PORT = 9092


def _broker(port: int | None, echo: Callable[[str], Any]) -> LocalKafka:
    if port is None:
        port = DEFAULT_PORT
        if not port_is_free(port) and not LocalKafka.for_port(port).is_running():
            port = free_port()
            echo(f"port {DEFAULT_PORT} is busy: the demo broker uses {port}")
    return LocalKafka.for_port(port)


def _has_alert_tables(snapshot: Path) -> bool:
    try:
        query_snapshot(snapshot, "SELECT 1 FROM ops.alert_outbox LIMIT 0")
    except duckdb.CatalogException:
        return False
    return True


def run_demo(
    *, events: int = 100_000, seed: int = 42, port: int | None = None, echo: Callable[[str], Any] = print
) -> dict[str, Any]:
    """Run the demo; returns the figures it printed (tests read them)."""
    from chipq_pipelines.events.config import KafkaConfig
    from chipq_pipelines.events.topics import ensure_topics
    from chipq_pipelines.runner import catch_up, ensure_dagster_home
    from chipq_pipelines.simulate import simulate_command

    home = ChipqHome.from_env()
    ensure_dagster_home(home)
    broker = _broker(port, echo)
    began = time.monotonic()
    started = broker.start()
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
    try:
        config = KafkaConfig(bootstrap_servers=broker.bootstrap)
        ensure_topics(config, partitions=6)
        truth_path = home.root / "demo-truth.json"
        echo(f"\n== 1/3 simulating a day of a small line: {events:,} events (seed {seed}) ==")
        simulate_command(events, seed, truth=truth_path, config=config, echo=echo)
        echo("\n== 2/3 running the pipeline (sensors → ingest → marts → alerts → snapshot) ==")
        report = catch_up(echo=echo)
        echo(f"caught up in {report.seconds:.0f} s with {sum(report.runs.values())} runs")
        echo("\n== 3/3 what the pipeline found ==")
        figures = summarize(home, json.loads(truth_path.read_text()), echo)
        figures["catch_up"] = {"runs": report.runs, "records_read": report.records_read}
    finally:
        if started:
            broker.stop()
            echo(f"\nstopped the demo broker at {broker.bootstrap}")
    echo(f"demo finished in {time.monotonic() - began:.0f} s")
    return figures


def summarize(home: ChipqHome, truth: dict[str, Any], echo: Callable[[str], Any]) -> dict[str, Any]:
    """Print the headline figures from the analyst snapshot, checked against the ground truth."""
    snapshot = home.analyst_snapshot

    def one(sql: str) -> Any:
        return query_snapshot(snapshot, sql).iloc[0, 0]

    figures: dict[str, Any] = {
        "inspection_events": int(one("SELECT count(*) FROM raw.inspection_events")),
        "rejected": int(one("SELECT count(*) FROM ops.rejected_events")),
        "lots_scored": int(one("SELECT count(*) FROM marts.lot_quality_scores")),
        "days": int(one("SELECT count(DISTINCT event_date) FROM marts.defect_rates")),
    }
    echo(
        f"events landed: {figures['inspection_events']:,} inspection events "
        f"(published {truth['stream']['unique_events']:,} unique + {truth['stream']['duplicates']:,} duplicates); "
        f"rejected with a reason: {figures['rejected']} (poison published: {truth['stream']['poison']})"
    )
    echo(f"lots scored: {figures['lots_scored']}, days of defect rates: {figures['days']}")
    worst = query_snapshot(
        snapshot,
        "SELECT lot_id, inspections_completed AS inspections, round(mean_quality_score, 3) AS mean_score, "
        "round(pass_rate, 3) AS pass_rate, round(defect_density, 3) AS defects_per_chip, critical_defects "
        "FROM marts.lot_quality_scores ORDER BY mean_quality_score LIMIT 5",
    )
    echo("\nworst lots by mean quality score:")
    echo(markdown_table(worst))
    figures.update(_alerts_summary(snapshot, truth, echo))
    echo(
        "\nnext:\n"
        "  chipq ui                         the Dagster UI: assets, runs and checks of this demo\n"
        '  chipq sql "SELECT * FROM marts.lot_quality_scores ORDER BY mean_quality_score LIMIT 10"\n'
        "  chipq alerts                     recent threshold violations\n"
        "  chipq report --out report.html   defect Pareto, daily trends, lot-score control chart"
    )
    return figures


def _alerts_summary(snapshot: Path, truth: dict[str, Any], echo: Callable[[str], Any]) -> dict[str, Any]:
    if not _has_alert_tables(snapshot):
        echo("\n(no alert tables in this warehouse)")
        return {}
    alerts = query_snapshot(
        snapshot,
        "SELECT rule, scope, lot_id, event_date, defect_type, alert_level, observed_value, threshold, "
        "published_at IS NOT NULL AS published FROM ops.alert_outbox ORDER BY scope, lot_id, rule",
    )
    published = int(alerts["published"].sum()) if len(alerts) else 0
    echo(f"\nthreshold violations: {len(alerts)} ({published} published as THRESHOLD_VIOLATED)")
    if len(alerts):
        by_rule = alerts.groupby(["rule", "alert_level"]).size().rename("count").reset_index()
        echo(markdown_table(by_rule))
    flagged_lots = set(alerts.loc[alerts["scope"] == "LOT", "lot_id"]) if len(alerts) else set()
    echo("\ninjected excursions:")
    caught = 0
    for excursion in truth.get("excursions", []):
        lot = excursion["lot_id"]
        rules = sorted(alerts.loc[alerts["lot_id"] == lot, "rule"]) if len(alerts) else []
        hit = bool(rules)
        caught += hit
        echo(f"  {'caught ' if hit else 'MISSED '} {lot} ({excursion['kind']}): {', '.join(rules) or 'no alert'}")
    clean = set(truth.get("clean_lots", []))
    false_alarms = sorted(flagged_lots & clean)
    total = len(truth.get("excursions", []))
    echo(f"excursions caught: {caught}/{total}; alerts on clean lots: {len(false_alarms)}")
    if false_alarms:
        false_rules = alerts[alerts["lot_id"].isin(false_alarms)][["lot_id", "rule"]]
        echo(markdown_table(pd.DataFrame(false_rules)))
    return {
        "violations": len(alerts),
        "published": published,
        "excursions_caught": caught,
        "excursions": total,
        "false_alarm_lots": false_alarms,
    }
