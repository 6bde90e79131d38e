-- Per topic partition, the next offset the warehouse reads (every offset below it is landed, rejected or a gap).
SELECT topic, partition, next_offset
FROM ops.ingested_offsets;
