-- Data quality behind marts.lot_quality_scores for the lots in $lots, whose raw rows lie on the
-- days in $days (a constant list: zone maps skip every other day). Quality events of those lots
-- are checked from $start to $end (the days' span: raw.quality_events has no event_date for lots).
WITH events AS (
    SELECT * FROM raw.inspection_events
    WHERE event_date = ANY(CAST($days AS DATE[]))
      AND batch_id IN (SELECT unnest(CAST($lots AS VARCHAR[])))
),
lots AS (
    SELECT * FROM marts.lot_quality_scores
    WHERE lot_id IN (SELECT unnest(CAST($lots AS VARCHAR[])))
),
quality_events AS (
    SELECT event_id FROM raw.quality_events
    WHERE event_time >= CAST($start AS TIMESTAMPTZ) AND event_time < CAST($end AS TIMESTAMPTZ)
      AND batch_id IN (SELECT unnest(CAST($lots AS VARCHAR[])))
),
defects AS (
    SELECT d.confidence FROM raw.defects AS d
    SEMI JOIN events AS e USING (event_id)
    WHERE d.event_date = ANY(CAST($days AS DATE[]))
)
SELECT
    (SELECT count(*) FROM events) AS raw_events_checked,
    (SELECT count(*) FROM lots) AS mart_rows_checked,
    (SELECT count(*) FROM (SELECT event_id FROM events GROUP BY event_id HAVING count(*) > 1))
        + (SELECT count(*) FROM (SELECT event_id FROM quality_events GROUP BY event_id HAVING count(*) > 1))
        AS duplicate_event_ids,
    (SELECT count(*) FROM events WHERE NOT (quality_score BETWEEN 0 AND 1)) AS raw_scores_out_of_range,
    (SELECT count(*) FROM defects WHERE NOT (confidence BETWEEN 0 AND 1)) AS confidences_out_of_range,
    (SELECT count(*) FROM events WHERE nullif(trim(batch_id), '') IS NULL)
        + (SELECT count(*) FROM lots WHERE nullif(trim(lot_id), '') IS NULL) AS null_lot_ids,
    (SELECT count(*) FROM lots WHERE NOT (mean_quality_score BETWEEN 0 AND 1)
        OR NOT (min_quality_score BETWEEN 0 AND 1)) AS mart_scores_out_of_range,
    (SELECT count(*) FROM lots WHERE NOT (pass_rate BETWEEN 0 AND 1)) AS pass_rates_out_of_range;
