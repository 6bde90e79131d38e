-- Acknowledge the unacknowledged gaps of one partition: all, or the one starting at $first_offset.
UPDATE ops.offset_gaps
SET acknowledged_at = $at, acknowledged_by = $by, note = $note
WHERE topic = $topic AND partition = $partition AND acknowledged_at IS NULL
  AND ($first_offset IS NULL OR first_offset = $first_offset)
RETURNING first_offset, last_offset;
