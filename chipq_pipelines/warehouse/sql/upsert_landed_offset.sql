INSERT INTO ops.ingested_offsets (topic, partition, next_offset, updated_at)
VALUES ($topic, $partition, $next_offset, $updated_at)
ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset, updated_at = excluded.updated_at;
