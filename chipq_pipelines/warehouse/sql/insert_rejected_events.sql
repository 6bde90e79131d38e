-- A record already rejected at the same coordinates stays as first recorded.
INSERT INTO ops.rejected_events BY NAME SELECT * FROM landing_rejected_events ON CONFLICT DO NOTHING;
