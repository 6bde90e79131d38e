-- The newest canaries published by runs other than $run_id (the ones a check judges), newest first.
SELECT event_id, published_at
FROM ops.canaries
WHERE run_id <> $run_id
ORDER BY published_at DESC
LIMIT 5;
