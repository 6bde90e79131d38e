-- New violations (registered as the relation new_violations); a known event_id is the same fact: kept as is.
INSERT INTO ops.alert_outbox BY NAME
SELECT * FROM new_violations
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id;
