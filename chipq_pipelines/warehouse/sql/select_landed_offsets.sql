SELECT partition, next_offset FROM ops.ingested_offsets WHERE topic = $topic ORDER BY partition;
