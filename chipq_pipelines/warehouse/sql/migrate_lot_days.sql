-- Once, when ops.lot_days is new on a warehouse with history: the days of every lot already landed.
INSERT INTO ops.lot_days
SELECT DISTINCT batch_id, event_date FROM raw.inspection_events
ON CONFLICT DO NOTHING;
