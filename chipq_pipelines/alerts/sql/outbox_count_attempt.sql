-- Recorded (and committed) before sending: after a crash the row shows it was sent once already.
-- change_seq ($change_seq, one ops.change_seq value per statement) marks the rows as changed.
UPDATE ops.alert_outbox
SET publish_attempts = publish_attempts + 1, change_seq = CAST($change_seq AS BIGINT)
WHERE event_id IN (SELECT event_id FROM sending);
