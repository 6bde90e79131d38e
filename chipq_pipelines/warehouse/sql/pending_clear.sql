-- One partition ($partition_key), or every partition of the mart when it is NULL.
DELETE FROM ops.pending_mart_partitions
WHERE mart = CAST($mart AS VARCHAR)
  AND (CAST($partition_key AS VARCHAR) IS NULL OR partition_key = CAST($partition_key AS VARCHAR));
