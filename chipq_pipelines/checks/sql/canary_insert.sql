INSERT INTO ops.canaries (event_id, inspection_id, published_at, kafka_partition, kafka_offset, run_id, change_seq)
VALUES ($event_id, $inspection_id, $published_at, $kafka_partition, $kafka_offset, $run_id, nextval('ops.change_seq'));
