SELECT event_date, defect_type, chips_inspected, chips_with_defect, defect_count, round(defect_rate, 4) AS defect_rate
FROM marts.defect_rates
WHERE event_date = ANY(CAST($days AS DATE[]))
ORDER BY event_date DESC, defect_rate DESC, defect_type
LIMIT $limit;
