-- When this copy of the warehouse was published (one row).
SELECT published_at FROM ops.snapshot_info;
