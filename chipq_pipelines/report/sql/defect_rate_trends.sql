-- Daily defect rate per defect type; a day with inspections but no defect of a type counts as 0.
WITH types AS (SELECT DISTINCT defect_type FROM marts.defect_rates)
SELECT d.event_date, t.defect_type, coalesce(r.defect_rate, 0.0) AS defect_rate
FROM marts.daily_inspections AS d
CROSS JOIN types AS t
LEFT JOIN marts.defect_rates AS r ON r.event_date = d.event_date AND r.defect_type = t.defect_type
ORDER BY t.defect_type, d.event_date;
