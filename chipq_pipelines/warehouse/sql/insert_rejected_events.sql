-- A record already rejected at the same coordinates stays as first recorded.
INSERT INTO ops.rejected_events BY NAME
SELECT *, CAST($landing_seq AS BIGINT) AS landing_seq FROM landing_rejected_events
ON CONFLICT DO NOTHING;
