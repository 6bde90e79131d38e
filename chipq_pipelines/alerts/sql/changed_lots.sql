-- The lots of marts.lot_quality_scores rewritten after $since (every lot when $since is NULL).
SELECT lot_id FROM marts.lot_quality_scores
WHERE CAST($since AS TIMESTAMPTZ) IS NULL OR updated_at > CAST($since AS TIMESTAMPTZ)
ORDER BY lot_id;
