SELECT count(*) FROM marts.defect_rates WHERE event_date = ANY(CAST($days AS DATE[]));
