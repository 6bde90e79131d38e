-- Data quality behind marts.lot_quality_scores, for one lot ($lot_id) or all (NULL).
WITH events AS (
    SELECT * FROM raw.inspection_events
    WHERE CAST($lot_id AS VARCHAR) IS NULL OR batch_id = CAST($lot_id AS VARCHAR)
),
lots AS (
    SELECT * FROM marts.lot_quality_scores
    WHERE CAST($lot_id AS VARCHAR) IS NULL OR lot_id = CAST($lot_id AS VARCHAR)
)
SELECT
    (SELECT count(*) FROM events) AS raw_events_checked,
    (SELECT count(*) FROM lots) AS mart_rows_checked,
    (SELECT count(*) FROM (SELECT event_id FROM events GROUP BY event_id HAVING count(*) > 1))
        + (SELECT count(*) FROM (
            SELECT event_id FROM raw.quality_events
            WHERE CAST($lot_id AS VARCHAR) IS NULL OR batch_id = CAST($lot_id AS VARCHAR)
            GROUP BY event_id HAVING count(*) > 1)) AS duplicate_event_ids,
    (SELECT count(*) FROM events WHERE NOT (quality_score BETWEEN 0 AND 1)) AS raw_scores_out_of_range,
    (SELECT count(*) FROM raw.defects AS d SEMI JOIN events AS e USING (event_id)
        WHERE NOT (d.confidence BETWEEN 0 AND 1)) AS confidences_out_of_range,
    (SELECT count(*) FROM events WHERE nullif(trim(batch_id), '') IS NULL)
        + (SELECT count(*) FROM lots WHERE nullif(trim(lot_id), '') IS NULL) AS null_lot_ids,
    (SELECT count(*) FROM lots WHERE NOT (mean_quality_score BETWEEN 0 AND 1)
        OR NOT (min_quality_score BETWEEN 0 AND 1)) AS mart_scores_out_of_range,
    (SELECT count(*) FROM lots WHERE NOT (pass_rate BETWEEN 0 AND 1)) AS pass_rates_out_of_range;
