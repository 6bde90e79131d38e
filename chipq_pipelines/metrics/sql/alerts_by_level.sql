-- chipq's alert events per type and level: acknowledged by Kafka, or still waiting in the outbox.
SELECT
    event_type,
    alert_level,
    count(*) FILTER (WHERE published_at IS NOT NULL) AS published,
    count(*) FILTER (WHERE published_at IS NULL) AS unpublished
FROM ops.alert_outbox
GROUP BY event_type, alert_level;
