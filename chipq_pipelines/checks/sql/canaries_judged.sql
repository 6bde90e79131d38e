-- Canaries published by earlier runs, newest first, with when (if) they landed in raw and
-- whether any mart counts them (it must not). Raw is read on $days only: the UTC days the
-- canaries' event times can fall on (each is stamped just before its publication).
WITH judged AS (
    SELECT * FROM ops.canaries
    WHERE run_id <> $run_id
    ORDER BY published_at DESC
    LIMIT 5
),
landed AS (
    SELECT event_id, batch_id, ingested_at FROM raw.inspection_events
    WHERE event_date = ANY(CAST($days AS DATE[]))
      AND event_id IN (SELECT event_id FROM judged)
)
SELECT
    c.event_id, c.inspection_id, c.published_at, r.ingested_at,
    epoch(r.ingested_at) - epoch(c.published_at) AS latency_seconds,
    epoch(now()) - epoch(c.published_at) AS age_seconds,
    EXISTS (SELECT 1 FROM marts.lot_quality_scores AS m WHERE m.lot_id = r.batch_id) AS in_marts
FROM judged AS c
LEFT JOIN landed AS r USING (event_id)
ORDER BY c.published_at DESC;
