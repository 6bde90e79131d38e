-- marts.defect_rates rows rewritten after $since (every row when $since is NULL).
SELECT event_date, defect_type, chips_inspected, chips_with_defect, defect_count, defect_rate, updated_at
FROM marts.defect_rates
WHERE CAST($since AS TIMESTAMPTZ) IS NULL OR updated_at > CAST($since AS TIMESTAMPTZ)
ORDER BY event_date, defect_type;
