-- Violations in the outbox by scope and level.
SELECT scope, alert_level, count(*) AS violations
FROM ops.alert_outbox
GROUP BY scope, alert_level
ORDER BY scope, alert_level;
