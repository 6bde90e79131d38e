-- The newest raw.quality_events landing_seq already searched for chipq's own alert events.
SELECT max(landing_seq) FROM ops.alert_state WHERE name = 'quality_topic';
