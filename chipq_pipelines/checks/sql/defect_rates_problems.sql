-- Data quality behind marts.defect_rates for the UTC days in $days (a constant list: zone maps
-- skip every other day of raw).
WITH events AS (
    SELECT * FROM raw.inspection_events WHERE event_date = ANY(CAST($days AS DATE[]))
),
days AS (
    SELECT * FROM marts.defect_rates WHERE event_date = ANY(CAST($days AS DATE[]))
),
defects AS (
    SELECT d.confidence FROM raw.defects AS d
    SEMI JOIN events AS e USING (event_id)
    WHERE d.event_date = ANY(CAST($days AS DATE[]))
)
SELECT
    (SELECT count(*) FROM events) AS raw_events_checked,
    (SELECT count(*) FROM days) AS mart_rows_checked,
    (SELECT count(*) FROM (SELECT event_id FROM events GROUP BY event_id HAVING count(*) > 1)) AS duplicate_event_ids,
    (SELECT count(*) FROM events WHERE NOT (quality_score BETWEEN 0 AND 1)) AS raw_scores_out_of_range,
    (SELECT count(*) FROM defects WHERE NOT (confidence BETWEEN 0 AND 1)) AS confidences_out_of_range,
    (SELECT count(*) FROM events WHERE nullif(trim(batch_id), '') IS NULL) AS null_lot_ids,
    (SELECT count(*) FROM days WHERE NOT (defect_rate BETWEEN 0 AND 1)
        OR chips_with_defect > chips_inspected) AS defect_rates_out_of_range;
