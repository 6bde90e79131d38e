-- Offset gaps for `chipq gaps`: unacknowledged ones, or all when $all.
SELECT topic, partition, first_offset, last_offset, last_offset - first_offset + 1 AS records, detected_at,
       acknowledged_at, acknowledged_by, note
FROM ops.offset_gaps
WHERE $all OR acknowledged_at IS NULL
ORDER BY detected_at, topic, partition, first_offset;
