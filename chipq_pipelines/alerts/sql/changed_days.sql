-- The days of marts.defect_rates rewritten after $since (every day when $since is NULL).
SELECT DISTINCT event_date FROM marts.defect_rates
WHERE CAST($since AS TIMESTAMPTZ) IS NULL OR updated_at > CAST($since AS TIMESTAMPTZ)
ORDER BY event_date;
