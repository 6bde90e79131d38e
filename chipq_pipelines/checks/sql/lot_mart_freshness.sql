-- Lots in $lots whose newest landed completed event (read on their days, $days) is newer than
-- their mart row (or that have no row); "stale" when that has lasted longer than $max_lag_seconds.
WITH landed AS (
    SELECT batch_id AS lot_id, max(ingested_at) AS newest_landed
    FROM raw.inspection_events
    WHERE event_type = 'INSPECTION_COMPLETED' AND NOT is_canary
      AND event_date = ANY(CAST($days AS DATE[]))
      AND batch_id IN (SELECT unnest(CAST($lots AS VARCHAR[])))
    GROUP BY batch_id
),
compared AS (
    SELECT l.lot_id, l.newest_landed, m.updated_at,
           m.updated_at IS NULL OR m.updated_at < l.newest_landed AS behind
    FROM landed AS l LEFT JOIN marts.lot_quality_scores AS m USING (lot_id)
)
SELECT
    count(*) AS partitions_with_data,
    count(*) FILTER (WHERE behind) AS partitions_behind,
    count(*) FILTER (WHERE behind AND newest_landed < now() - to_seconds(CAST($max_lag_seconds AS DOUBLE)))
        AS partitions_stale,
    coalesce(max(epoch(now()) - epoch(newest_landed)) FILTER (WHERE behind), 0) AS oldest_behind_seconds,
    max(updated_at) AS newest_mart_update,
    max(newest_landed) AS newest_landed,
    list(lot_id ORDER BY newest_landed) FILTER (WHERE behind)[1:5] AS examples
FROM compared;
