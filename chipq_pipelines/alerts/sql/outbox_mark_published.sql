-- Only acknowledged events (registered as the relation acked) are marked published.
-- change_seq ($change_seq, one ops.change_seq value per statement) marks the rows as changed.
UPDATE ops.alert_outbox AS o
SET published_at = a.published_at, kafka_partition = a.kafka_partition, kafka_offset = a.kafka_offset,
    change_seq = CAST($change_seq AS BIGINT)
FROM acked AS a
WHERE o.event_id = a.event_id;
