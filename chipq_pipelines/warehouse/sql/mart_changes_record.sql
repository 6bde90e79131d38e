-- Partitions $keys of mart $mart were rewritten, numbered $change_seq (the snapshot copies what changed).
INSERT INTO ops.mart_changes
SELECT CAST($mart AS VARCHAR), key, CAST($change_seq AS BIGINT)
FROM (SELECT unnest(CAST($keys AS VARCHAR[])) AS key)
ON CONFLICT (mart, partition_key) DO UPDATE SET change_seq = excluded.change_seq;
