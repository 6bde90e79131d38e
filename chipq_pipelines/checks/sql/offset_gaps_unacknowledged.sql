-- Offsets deleted from Kafka before they landed that no operator has acknowledged yet.
SELECT topic, partition, first_offset, last_offset, last_offset - first_offset + 1 AS records, detected_at
FROM ops.offset_gaps
WHERE acknowledged_at IS NULL
ORDER BY topic, partition, first_offset;
