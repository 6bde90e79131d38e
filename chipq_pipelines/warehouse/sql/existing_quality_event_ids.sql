-- Event ids of the batch (registered as landing_event_ids) already in raw.quality_events,
-- looked up on one UTC day of event_time: [$day_start, $day_end). Zone maps skip other days.
SELECT event_id FROM landing_event_ids
SEMI JOIN (
    SELECT event_id FROM raw.quality_events WHERE event_time >= $day_start AND event_time < $day_end
) USING (event_id);
