-- Partitions $keys of mart $mart were rewritten: no longer pending.
DELETE FROM ops.pending_mart_partitions
WHERE mart = CAST($mart AS VARCHAR) AND partition_key = ANY(CAST($keys AS VARCHAR[]));
