-- Per lot in $lots: distinct completed inspections in raw (read on the lots' days, $days) vs
-- inspections_completed in the mart. Lots whose newest event landed within $settle_seconds are
-- still in flight and not compared.
WITH raw_lots AS (
    SELECT batch_id AS lot_id, count(*) AS raw_completed_events,
           count(DISTINCT inspection_id) AS raw_inspections, max(ingested_at) AS newest_landed
    FROM raw.inspection_events
    WHERE event_type = 'INSPECTION_COMPLETED' AND NOT is_canary
      AND event_date = ANY(CAST($days AS DATE[]))
      AND batch_id IN (SELECT unnest(CAST($lots AS VARCHAR[])))
    GROUP BY batch_id
),
mart_lots AS (
    SELECT lot_id, inspections_completed FROM marts.lot_quality_scores
    WHERE lot_id IN (SELECT unnest(CAST($lots AS VARCHAR[])))
)
SELECT
    coalesce(r.lot_id, m.lot_id) AS lot_id,
    coalesce(r.raw_completed_events, 0) AS raw_completed_events,
    coalesce(r.raw_inspections, 0) AS raw_inspections,
    coalesce(m.inspections_completed, 0) AS mart_inspections,
    r.newest_landed IS NOT NULL
        AND r.newest_landed >= now() - to_seconds(CAST($settle_seconds AS DOUBLE)) AS in_flight
FROM raw_lots AS r FULL OUTER JOIN mart_lots AS m USING (lot_id);
