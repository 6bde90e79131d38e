-- Gaps found by one landing, in its transaction; a replayed range finds the same gap again: kept once.
INSERT INTO ops.offset_gaps (topic, partition, first_offset, last_offset, detected_at)
SELECT topic, partition, first_offset, last_offset, detected_at FROM landing_offset_gaps
ON CONFLICT DO NOTHING;
