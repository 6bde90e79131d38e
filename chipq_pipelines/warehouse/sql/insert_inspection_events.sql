INSERT INTO raw.inspection_events BY NAME SELECT *, CAST($landing_seq AS BIGINT) AS landing_seq FROM landing_inspection_events;
