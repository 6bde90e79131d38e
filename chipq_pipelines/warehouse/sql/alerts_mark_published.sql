-- Only acknowledged events (registered as the relation acked) are marked published.
UPDATE ops.alert_outbox AS o
SET published_at = a.published_at, kafka_partition = a.kafka_partition, kafka_offset = a.kafka_offset
FROM acked AS a
WHERE o.event_id = a.event_id;
