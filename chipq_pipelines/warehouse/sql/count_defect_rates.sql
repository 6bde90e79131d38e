SELECT count(*) FROM marts.defect_rates WHERE CAST($event_date AS DATE) IS NULL OR event_date = CAST($event_date AS DATE);
