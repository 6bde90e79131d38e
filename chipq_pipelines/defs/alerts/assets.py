"""Alert assets: evaluate the rules into ``ops.alert_outbox``, then publish it to Kafka."""

import dagster as dg
import pandas as pd

from chipq_pipelines.alerts.outbox import Evaluation, changed_partitions, evaluate_into_outbox, publish_outbox
from chipq_pipelines.checks.quality import mart_quality_problems
from chipq_pipelines.defs.ingest.assets import raw_inspection_events
from chipq_pipelines.defs.marts.assets import defect_rates, lot_quality_scores
from chipq_pipelines.defs.resources import KafkaResource, WarehouseResource
from chipq_pipelines.defs.shared import ON_UPSTREAM_CHANGE, warehouse_asset
from chipq_pipelines.events.producers import SyncQualityEventProducer
from chipq_pipelines.rules.loader import load_rules

PREVIEW_ROWS = 50


def _violations_markdown(evaluation: Evaluation) -> str:
    if not evaluation.new_violations:
        return "No new violations."
    rows = [
        {
            "level": v.alert_level,
            "rule": v.rule,
            "scope": v.scope,
            "subject": v.partition,
            "observed": round(v.observed_value, 6),
            "limit": round(v.threshold, 6),
            "message": v.message,
        }
        for v in evaluation.new_violations[:PREVIEW_ROWS]
    ]
    more = len(evaluation.new_violations) - PREVIEW_ROWS
    return pd.DataFrame(rows).to_markdown(index=False) + (f"\n\n… and {more} more" if more > 0 else "")


@warehouse_asset(
    key=["ops", "alert_outbox"],
    # raw/inspection_events too: in a pipeline cycle its step is what rewrites the marts, so it runs first
    deps=[defect_rates, lot_quality_scores, raw_inspection_events],
    group_name="alerts",
    kinds={"duckdb"},
    automation_condition=ON_UPSTREAM_CHANGE,
    description=(
        "Threshold violations (`ops.alert_outbox`, for analysts `ops.alerts`): the rules in "
        "`chipq_pipelines/rules/rules.yaml` (or `$CHIPQ_RULES`) evaluated on the lots and days rewritten "
        "since the last evaluation, plus SPC (Western Electric, u- and p-charts) against a frozen baseline. "
        "Each violation has a deterministic event id, so re-evaluation never alerts twice."
    ),
)
def alert_outbox(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Evaluate the rules on changed mart partitions and store new violations in the outbox."""
    rules = load_rules()
    with warehouse.connect() as conn:
        # Never alert from data that fails the marts' blocking data-quality checks. Those checks run in the
        # marts' own partitioned runs, not in a pipeline cycle (two more steps per cycle cost freshness);
        # so the same queries run here, on exactly the lots and days about to be evaluated (rewritten
        # since the last evaluation, an earlier run's too).
        lot_ids, days = changed_partitions(conn, rules)
        problems = mart_quality_problems(conn, lot_ids, days)
        if problems:
            raise dg.Failure(
                description=f"marts fail their data-quality checks, no alerts evaluated: {problems}",
                metadata={"problems": dg.MetadataValue.json(problems)},
                allow_retries=False,  # the data, not a transient fault: retrying cannot help
            )
        evaluation = evaluate_into_outbox(conn, rules)
    by_rule: dict[str, int] = {}
    for violation in evaluation.new_violations:
        by_rule[violation.rule] = by_rule.get(violation.rule, 0) + 1
    context.log.info(
        f"{len(evaluation.new_violations)} new violations ({evaluation.violations_found} found) over "
        f"{evaluation.lots_evaluated} lots and {evaluation.days_evaluated} days; SPC {evaluation.baseline_status}"
    )
    return dg.MaterializeResult(
        metadata={
            "new_violations": dg.MetadataValue.int(len(evaluation.new_violations)),
            "violations_found": dg.MetadataValue.int(evaluation.violations_found),
            "new_by_rule": dg.MetadataValue.json(by_rule),
            "violations": dg.MetadataValue.md(_violations_markdown(evaluation)),
            "lots_evaluated": dg.MetadataValue.int(evaluation.lots_evaluated),
            "lots_read": dg.MetadataValue.int(evaluation.lots_read),
            "days_evaluated": dg.MetadataValue.int(evaluation.days_evaluated),
            "spc_lots_judged": dg.MetadataValue.int(evaluation.spc_lots_judged),
            "spc_baseline": dg.MetadataValue.text(evaluation.baseline_status),
            "rules_version": dg.MetadataValue.text(rules.version),
            "rules_file": dg.MetadataValue.text(rules.source),
        }
    )


@warehouse_asset(
    key=["ops", "threshold_violation_events"],
    deps=[alert_outbox],
    group_name="alerts",
    kinds={"kafka", "duckdb"},
    automation_condition=ON_UPSTREAM_CHANGE,
    # A broker away for a moment: the step retries (10 s, 20 s, 40 s); after that the next run's publish does.
    retry_policy=dg.RetryPolicy(max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL),
    description=(
        "Unpublished outbox rows sent as THRESHOLD_VIOLATED (scope LOT or DAY) to "
        "`chip-quality.quality.events` with the idempotent producer; a row is marked published only "
        "after Kafka acknowledged it, so a crash in between re-sends the same event id."
    ),
)
def threshold_violation_events(
    context: dg.AssetExecutionContext, kafka: KafkaResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Publish the outbox to Kafka (at least once, deterministic event ids)."""
    producer = SyncQualityEventProducer(kafka.config(), topic=kafka.quality_topic)
    with warehouse.connect() as conn, producer:
        publication = publish_outbox(conn, producer.publish_batch)
    context.log.info(
        f"published {publication.acknowledged} THRESHOLD_VIOLATED events to {kafka.quality_topic}"
        + (f" ({publication.resent} re-sent after an earlier unfinished run)" if publication.resent else "")
    )
    table = pd.DataFrame(publication.published[:PREVIEW_ROWS])
    return dg.MaterializeResult(
        metadata={
            "published": dg.MetadataValue.int(publication.acknowledged),
            "resent": dg.MetadataValue.int(publication.resent),
            "topic": dg.MetadataValue.text(kafka.quality_topic),
            "events": dg.MetadataValue.md(table.to_markdown(index=False) if len(table) else "Nothing to publish."),
        }
    )
