-- Recorded (and committed) before sending: after a crash the row shows it was sent once already.
UPDATE ops.alert_outbox SET publish_attempts = publish_attempts + 1
WHERE event_id IN (SELECT event_id FROM sending);
