-- Days in $days with defects whose newest landed completed event is newer than their defect_rates
-- rows; "stale" when that has lasted longer than $max_lag_seconds.
-- (A day without defects has no defect_rates rows, so it cannot be behind.)
WITH landed AS (
    SELECT e.event_date, max(e.ingested_at) AS newest_landed
    FROM raw.inspection_events AS e
    SEMI JOIN (
        SELECT event_id FROM raw.defects WHERE event_date = ANY(CAST($days AS DATE[]))
    ) AS d USING (event_id)
    WHERE e.event_type = 'INSPECTION_COMPLETED' AND NOT e.is_canary
      AND e.event_date = ANY(CAST($days AS DATE[]))
    GROUP BY e.event_date
),
rewritten AS (
    SELECT event_date, min(updated_at) AS updated_at FROM marts.defect_rates
    WHERE event_date = ANY(CAST($days AS DATE[]))
    GROUP BY event_date
),
compared AS (
    SELECT l.event_date, l.newest_landed, r.updated_at,
           r.updated_at IS NULL OR r.updated_at < l.newest_landed AS behind
    FROM landed AS l LEFT JOIN rewritten AS r USING (event_date)
)
SELECT
    count(*) AS partitions_with_data,
    count(*) FILTER (WHERE behind) AS partitions_behind,
    count(*) FILTER (WHERE behind AND newest_landed < now() - to_seconds(CAST($max_lag_seconds AS DOUBLE)))
        AS partitions_stale,
    coalesce(max(epoch(now()) - epoch(newest_landed)) FILTER (WHERE behind), 0) AS oldest_behind_seconds,
    max(updated_at) AS newest_mart_update,
    max(newest_landed) AS newest_landed,
    list(strftime(event_date, '%Y-%m-%d') ORDER BY newest_landed) FILTER (WHERE behind)[1:5] AS examples
FROM compared;
