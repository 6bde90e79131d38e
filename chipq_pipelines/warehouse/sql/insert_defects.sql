INSERT INTO raw.defects BY NAME SELECT *, CAST($landing_seq AS BIGINT) AS landing_seq FROM landing_defects;
