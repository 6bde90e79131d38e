SELECT mart, partition_key FROM ops.pending_mart_partitions ORDER BY mart, partition_key;
