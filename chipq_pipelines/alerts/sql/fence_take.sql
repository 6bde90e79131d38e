-- The end offsets ($topic, $partition, $end_offset) alerts wait for, taken now (see alerts/fence.py).
INSERT INTO ops.alert_fence (topic, partition, end_offset, covers_change_seq, taken_at, reason)
VALUES ($topic, $partition, $end_offset, $covers_change_seq, now(), $reason)
ON CONFLICT (topic, partition) DO UPDATE SET
    end_offset = greatest(ops.alert_fence.end_offset, excluded.end_offset),
    covers_change_seq = excluded.covers_change_seq, taken_at = excluded.taken_at, reason = excluded.reason;
