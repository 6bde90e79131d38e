-- New violations and clearances (registered as the relation new_alerts); a known event_id is the same fact:
-- kept as is. change_seq ($change_seq, one ops.change_seq value per statement) lets the snapshot copy only
-- changed rows.
INSERT INTO ops.alert_outbox BY NAME
SELECT *, CAST($change_seq AS BIGINT) AS change_seq FROM new_alerts
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id;
