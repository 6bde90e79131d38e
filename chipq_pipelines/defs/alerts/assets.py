"""Alert assets: evaluate the rules into ``ops.alert_outbox`` (violations and clearances), then publish it."""

import dagster as dg
import pandas as pd

from chipq_pipelines.alerts.fence import TopicFence
from chipq_pipelines.alerts.outbox import Evaluation, changed_partitions, evaluate_into_outbox
from chipq_pipelines.alerts.publish import publish_outbox
from chipq_pipelines.checks.quality import MartProblems, mart_quality_problems
from chipq_pipelines.defs.ingest.assets import raw_inspection_events
from chipq_pipelines.defs.marts.assets import defect_rates, lot_quality_scores
from chipq_pipelines.defs.resources import KafkaResource, WarehouseResource
from chipq_pipelines.defs.shared import ON_UPSTREAM_CHANGE, warehouse_asset
from chipq_pipelines.events.producers import SyncQualityEventProducer
from chipq_pipelines.rules.loader import load_rules

PREVIEW_ROWS = 50


def _fence(kafka: KafkaResource) -> TopicFence:
    return TopicFence.for_kafka(kafka.config(), kafka.inspection_topic, kafka.quality_topic)


def _deferred_markdown(deferred: list[str]) -> str:
    return "Waiting for landing to reach the alert fence (ops.alert_fence):\n\n" + "\n".join(
        f"- {gap}" for gap in deferred
    )


def _violations_markdown(evaluation: Evaluation) -> str:
    if evaluation.deferred:
        return _deferred_markdown(evaluation.deferred)
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


def _offenders_markdown(problems: MartProblems) -> str:
    rows = [{"mart": "lot_quality_scores", **row} for row in problems.lot_offenders[:PREVIEW_ROWS]]
    rows += [{"mart": "defect_rates", **row} for row in problems.day_offenders[:PREVIEW_ROWS]]
    return pd.DataFrame(rows).to_markdown(index=False) if rows else "None: every evaluated partition is clean."


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
        "Each violation has a deterministic event id, so re-evaluation never alerts twice; a lot or day that "
        "stops breaking a rule gets one THRESHOLD_CLEARED, and breaking it again opens a new episode (new id). "
        "A new warehouse waits until the topics are landed up to the fence taken at its first run, so that a "
        "rebuild from Kafka knows the alerts already published."
    ),
)
def alert_outbox(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, kafka: KafkaResource
) -> dg.MaterializeResult:
    """Evaluate the rules on changed mart partitions; store new violations and clearances in the outbox."""
    rules = load_rules()
    with warehouse.connect() as conn:
        # Never alert from data that fails the marts' blocking data-quality checks. Those checks run in the
        # marts' own partitioned runs, not in a pipeline cycle (two more steps per cycle cost freshness);
        # so the same queries run here, on exactly the lots and days about to be evaluated (rewritten
        # since the last evaluation, an earlier run's too). The partitions they name are passed over,
        # not the whole evaluation: one bad event must not stop alerts for every other lot.
        lot_ids, days = changed_partitions(conn, rules)
        problems = mart_quality_problems(conn, lot_ids, days)
        if problems:
            context.log.error(
                f"marts fail their data-quality checks ({problems.counts}); no alerts from lots "
                f"{sorted(problems.lots)[:20]} and days {sorted(d.isoformat() for d in problems.days)[:20]} "
                "until they change again: see the metadata's offending_rows"
            )
        evaluation = evaluate_into_outbox(
            conn, rules, _fence(kafka), quarantined_lots=problems.lots, quarantined_days=problems.days
        )
    if evaluation.deferred:
        context.log.warning(f"alerts not evaluated yet: {'; '.join(evaluation.deferred)}")
    by_rule: dict[str, int] = {}
    for violation in evaluation.new_violations:
        by_rule[violation.rule] = by_rule.get(violation.rule, 0) + 1
    context.log.info(
        f"{len(evaluation.new_violations)} new violations ({evaluation.violations_found} found), "
        f"{len(evaluation.new_clearances)} clearances over "
        f"{evaluation.lots_evaluated} lots and {evaluation.days_evaluated} days; SPC {evaluation.baseline_status}"
    )
    return dg.MaterializeResult(
        metadata={
            "quarantined_lots": dg.MetadataValue.int(len(problems.lots)),
            "quarantined_days": dg.MetadataValue.int(len(problems.days)),
            "offending_rows": dg.MetadataValue.md(_offenders_markdown(problems)),
            "new_violations": dg.MetadataValue.int(len(evaluation.new_violations)),
            "new_clearances": dg.MetadataValue.int(len(evaluation.new_clearances)),
            "found_on_topic": dg.MetadataValue.int(evaluation.found_on_topic),
            "deferred": dg.MetadataValue.bool(bool(evaluation.deferred)),
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
        "Unpublished outbox rows sent as THRESHOLD_VIOLATED or THRESHOLD_CLEARED (scope LOT or DAY) to "
        "`chip-quality.quality.events` with the idempotent producer; a row is marked published once Kafka "
        "acknowledged it, or once its event is found among the landed quality events (never sent twice). "
        "Waits (metadata `deferred`) while the quality topic is not landed up to the alert fence."
    ),
)
def threshold_violation_events(
    context: dg.AssetExecutionContext, kafka: KafkaResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Publish the outbox to Kafka (deterministic event ids; an event found on the topic is not sent again)."""
    producer = SyncQualityEventProducer(kafka.config(), topic=kafka.quality_topic)
    with warehouse.connect() as conn, producer:
        publication = publish_outbox(conn, producer.publish_batch, fence=_fence(kafka))
    if publication.deferred:
        context.log.warning(f"alerts not published yet: {'; '.join(publication.deferred)}")
    context.log.info(
        f"published {publication.acknowledged} alert events to {kafka.quality_topic}; "
        f"{publication.found_on_topic} found already on it"
        + (f" ({publication.resent} re-sent after an earlier unfinished run)" if publication.resent else "")
    )
    table = pd.DataFrame(publication.published[:PREVIEW_ROWS])
    return dg.MaterializeResult(
        metadata={
            "published": dg.MetadataValue.int(publication.acknowledged),
            "resent": dg.MetadataValue.int(publication.resent),
            "found_on_topic": dg.MetadataValue.int(publication.found_on_topic),
            "deferred": dg.MetadataValue.bool(bool(publication.deferred)),
            "topic": dg.MetadataValue.text(kafka.quality_topic),
            "events": dg.MetadataValue.md(
                _deferred_markdown(publication.deferred)
                if publication.deferred
                else table.to_markdown(index=False)
                if len(table)
                else "Nothing to publish."
            ),
        }
    )
