-- Fenced partitions of the topics in $topics that the warehouse has not landed up to the fence yet.
SELECT f.topic, f.partition, f.end_offset, coalesce(i.next_offset, 0) AS landed, f.reason
FROM ops.alert_fence AS f
LEFT JOIN ops.ingested_offsets AS i ON i.topic = f.topic AND i.partition = f.partition
WHERE f.topic IN (SELECT unnest(CAST($topics AS VARCHAR[])))
  AND coalesce(i.next_offset, 0) < f.end_offset
ORDER BY f.topic, f.partition;
