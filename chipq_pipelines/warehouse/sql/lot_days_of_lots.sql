-- The days on which the lots in $lots have rows (every day when all lots are asked).
SELECT DISTINCT event_date FROM ops.lot_days WHERE lot_id IN (SELECT unnest(CAST($lots AS VARCHAR[]))) ORDER BY 1;
