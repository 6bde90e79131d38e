-- Event ids of the batch (registered as landing_event_ids) already in raw.inspection_events.
SELECT event_id FROM landing_event_ids SEMI JOIN raw.inspection_events USING (event_id);
