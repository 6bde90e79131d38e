INSERT INTO ops.alert_state (name, landing_seq, updated_at)
VALUES ('quality_topic', $landing_seq, now())
ON CONFLICT (name) DO UPDATE SET landing_seq = excluded.landing_seq, updated_at = excluded.updated_at;
