-- The rows behind defect_rates_problems, named: per UTC day and problem, how many rows and one
-- example (an event id, or the defect type for mart rows). Same scope as defect_rates_problems.
WITH events AS (
    SELECT event_id, event_date, batch_id, quality_score FROM raw.inspection_events
    WHERE event_date = ANY(CAST($days AS DATE[]))
),
offending AS (
    SELECT event_date, 'duplicate_event_ids' AS problem, event_id AS example
    FROM events GROUP BY event_date, event_id HAVING count(*) > 1
    UNION ALL
    SELECT event_date, 'raw_scores_out_of_range', event_id FROM events WHERE NOT (quality_score BETWEEN 0 AND 1)
    UNION ALL
    SELECT e.event_date, 'confidences_out_of_range', e.event_id
    FROM raw.defects AS d JOIN events AS e USING (event_id)
    WHERE d.event_date = ANY(CAST($days AS DATE[])) AND NOT (d.confidence BETWEEN 0 AND 1)
    UNION ALL
    SELECT event_date, 'null_lot_ids', event_id FROM events WHERE nullif(trim(batch_id), '') IS NULL
    UNION ALL
    SELECT event_date, 'defect_rates_out_of_range', defect_type FROM marts.defect_rates
    WHERE event_date = ANY(CAST($days AS DATE[]))
      AND (NOT (defect_rate BETWEEN 0 AND 1) OR chips_with_defect > chips_inspected)
)
SELECT CAST(event_date AS VARCHAR) AS partition_key, problem, count(*) AS rows, min(example) AS example
FROM offending
GROUP BY event_date, problem
ORDER BY event_date, problem
LIMIT $limit;
