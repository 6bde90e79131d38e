"""Request exactly the mart partitions that newly landed rows touched.

The ingest runs record the event dates and lots they touched in their
materialization metadata; this sensor reads them from Dagster's event log
(never from DuckDB), adds new lots to the ``lots`` dynamic partitions and
requests those partitions, then a fresh analyst snapshot.
"""

import json

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from chipq_pipelines.defs.ingest.assets import raw_inspection_events, raw_quality_events
from chipq_pipelines.defs.marts.assets import (
    analyst_snapshot,
    defect_rates,
    defect_rates_job,
    lot_quality_job,
    lot_quality_scores,
    snapshot_job,
)
from chipq_pipelines.defs.partitions import daily_partitions, lot_partition_key, lot_partitions

_PAGE = 200


def _latest_storage_id(instance: dg.DagsterInstance, key: dg.AssetKey) -> int:
    records = instance.fetch_materializations(key, limit=1).records
    return records[0].storage_id if records else 0


#: Lot partitions are many and small: two touched blocks this close become one run, whose set-based
#: rewrite of the untouched lots between them (exact and idempotent) costs far less than a run.
LOT_MERGE_GAP = 20


def _range_requests(
    job_name: str, order: list[str], touched: set[str], tag: int | None, merge_gap: int = 0
) -> list[dg.RunRequest]:
    """One run per block of touched partitions (in the partitions' own order).

    A block is contiguous, or spans gaps of at most ``merge_gap`` untouched partitions.
    """
    blocks: list[list[str]] = []
    previous = -(merge_gap + 2)
    for index, key in enumerate(order):
        if key not in touched:
            continue
        if index > previous + 1 + merge_gap:
            blocks.append([])
        elif index != previous + 1:
            blocks[-1].extend(order[previous + 1 : index])  # the untouched ones in between
        blocks[-1].append(key)
        previous = index
    requests = []
    for block in blocks:
        first, last = block[0], block[-1]
        if first == last:
            requests.append(dg.RunRequest(run_key=f"{job_name}|{first}|{tag}", job_name=job_name, partition_key=first))
        else:
            requests.append(
                dg.RunRequest(
                    run_key=f"{job_name}|{first}..{last}|{tag}",
                    job_name=job_name,
                    tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last},
                )
            )
    return requests


@dg.sensor(
    name="mart_partitions_sensor",
    jobs=[defect_rates_job, lot_quality_job, snapshot_job],
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Turns the days and lots touched by new raw rows into defect_rates and lot_quality_scores "
        "partition runs, then refreshes the analyst snapshot."
    ),
)
def mart_partitions_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    cursor = json.loads(context.cursor) if context.cursor else {}
    records = context.instance.fetch_materializations(
        raw_inspection_events.key, limit=_PAGE, cursor=cursor.get("raw"), ascending=True
    )
    days: set[str] = set()
    lots: set[str] = set()
    for record in records.records:
        materialization = record.asset_materialization
        if materialization is None:
            continue
        metadata = materialization.metadata
        if "touched_event_dates" in metadata:
            days.update(metadata["touched_event_dates"].value)  # type: ignore[arg-type]
        if "touched_lot_ids" in metadata:
            lots.update(metadata["touched_lot_ids"].value)  # type: ignore[arg-type]
    tag = records.records[-1].storage_id if records.records else None
    day_order = daily_partitions.get_partition_keys(dynamic_partitions_store=context.instance)
    unknown_days = sorted(days - set(day_order))
    if unknown_days:
        context.log.warning(f"event dates without a defect_rates partition, not requested: {unknown_days}")
    known_lots = context.instance.get_dynamic_partitions(lot_partitions.name)
    known = set(known_lots)
    lot_keys = {lot_partition_key(lot) for lot in lots}
    new_lots = sorted(lot_keys - known)
    lot_order = [*known_lots, *new_lots]  # new keys are appended in this order
    requests = [
        *_range_requests(defect_rates_job.name, day_order, days, tag),
        *_range_requests(lot_quality_job.name, lot_order, lot_keys, tag, merge_gap=LOT_MERGE_GAP),
    ]

    # Snapshot: whenever anything it copies changed after the last snapshot.
    newest_source = max(
        _latest_storage_id(context.instance, key)
        for key in (raw_inspection_events.key, raw_quality_events.key, defect_rates.key, lot_quality_scores.key)
    )
    last_snapshot = _latest_storage_id(context.instance, analyst_snapshot.key)
    if requests or newest_source > last_snapshot:
        marker = max(newest_source, tag or 0)
        requests.append(dg.RunRequest(run_key=f"snapshot|{marker}", job_name=snapshot_job.name))
    new_cursor = json.dumps({"raw": records.cursor if records.records else cursor.get("raw")})
    if not requests:
        return dg.SensorResult(skip_reason="no new rows since the last evaluation", cursor=new_cursor)
    return dg.SensorResult(
        run_requests=requests,
        cursor=new_cursor,
        dynamic_partitions_requests=[lot_partitions.build_add_request(new_lots)] if new_lots else [],
    )
