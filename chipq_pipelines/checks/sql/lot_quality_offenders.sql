-- The rows behind lot_quality_problems, named: per lot and problem, how many rows and one example
-- (an event id, or the lot itself for mart rows). Same scope and filters as lot_quality_problems.
WITH events AS (
    SELECT event_id, batch_id, quality_score FROM raw.inspection_events
    WHERE event_date = ANY(CAST($days AS DATE[]))
      AND batch_id IN (SELECT unnest(CAST($lots AS VARCHAR[])))
),
lots AS (
    SELECT * FROM marts.lot_quality_scores
    WHERE lot_id IN (SELECT unnest(CAST($lots AS VARCHAR[])))
),
quality_events AS (
    SELECT event_id, batch_id FROM raw.quality_events
    WHERE event_time >= CAST($start AS TIMESTAMPTZ) AND event_time < CAST($end AS TIMESTAMPTZ)
      AND batch_id IN (SELECT unnest(CAST($lots AS VARCHAR[])))
),
offending AS (
    SELECT batch_id AS lot_id, 'duplicate_event_ids' AS problem, event_id AS example
    FROM events GROUP BY batch_id, event_id HAVING count(*) > 1
    UNION ALL
    SELECT batch_id, 'duplicate_event_ids', event_id FROM quality_events GROUP BY batch_id, event_id HAVING count(*) > 1
    UNION ALL
    SELECT batch_id, 'raw_scores_out_of_range', event_id FROM events WHERE NOT (quality_score BETWEEN 0 AND 1)
    UNION ALL
    SELECT e.batch_id, 'confidences_out_of_range', e.event_id
    FROM raw.defects AS d JOIN events AS e USING (event_id)
    WHERE d.event_date = ANY(CAST($days AS DATE[])) AND NOT (d.confidence BETWEEN 0 AND 1)
    UNION ALL
    SELECT batch_id, 'null_lot_ids', event_id FROM events WHERE nullif(trim(batch_id), '') IS NULL
    UNION ALL
    SELECT lot_id, 'mart_scores_out_of_range', lot_id FROM lots
    WHERE NOT (mean_quality_score BETWEEN 0 AND 1) OR NOT (min_quality_score BETWEEN 0 AND 1)
    UNION ALL
    SELECT lot_id, 'pass_rates_out_of_range', lot_id FROM lots WHERE NOT (pass_rate BETWEEN 0 AND 1)
)
SELECT lot_id AS partition_key, problem, count(*) AS rows, min(example) AS example
FROM offending
GROUP BY lot_id, problem
ORDER BY lot_id, problem
LIMIT $limit;
