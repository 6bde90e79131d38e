-- Records deleted from Kafka before they landed that no operator has acknowledged (chipq gaps ack), per topic.
SELECT topic, sum(last_offset - first_offset + 1) AS records
FROM ops.offset_gaps
WHERE acknowledged_at IS NULL
GROUP BY topic;
