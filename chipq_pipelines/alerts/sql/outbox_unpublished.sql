-- Outbox rows Kafka has not acknowledged yet, oldest first.
SELECT event_id, event_type, episode, rule, rules_version, scope, lot_id, event_date, defect_type, alert_level,
       threshold, observed_value, message, detected_at, publish_attempts
FROM ops.alert_outbox
WHERE published_at IS NULL
ORDER BY detected_at, event_id
LIMIT $limit;
