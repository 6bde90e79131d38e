-- The lots with inspection events on the days in $days (from ops.lot_days, not raw).
SELECT DISTINCT lot_id FROM ops.lot_days WHERE event_date = ANY(CAST($days AS DATE[])) ORDER BY lot_id;
