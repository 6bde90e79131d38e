INSERT INTO raw.quality_events BY NAME SELECT *, CAST($landing_seq AS BIGINT) AS landing_seq FROM landing_quality_events;
