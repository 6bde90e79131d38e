INSERT INTO ops.pending_mart_partitions
SELECT CAST($mart AS VARCHAR), key, CAST($since AS TIMESTAMPTZ)
FROM (SELECT unnest(CAST($keys AS VARCHAR[])) AS key)
ON CONFLICT DO NOTHING;
