-- The days of the batch's lots (registered as landing_lot_days).
INSERT INTO ops.lot_days (lot_id, event_date)
SELECT batch_id, event_date FROM landing_lot_days
ON CONFLICT DO NOTHING;
