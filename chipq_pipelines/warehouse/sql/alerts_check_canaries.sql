-- Canaries published by earlier runs, newest first, with when (if) they landed in raw and
-- whether any mart counts them (it must not).
SELECT
    c.event_id, c.inspection_id, c.published_at, r.ingested_at,
    epoch(r.ingested_at) - epoch(c.published_at) AS latency_seconds,
    epoch(now()) - epoch(c.published_at) AS age_seconds,
    EXISTS (SELECT 1 FROM marts.lot_quality_scores AS m WHERE m.lot_id = r.batch_id) AS in_marts
FROM ops.canaries AS c
LEFT JOIN raw.inspection_events AS r USING (event_id)
WHERE c.run_id <> $run_id
ORDER BY c.published_at DESC
LIMIT 5;
