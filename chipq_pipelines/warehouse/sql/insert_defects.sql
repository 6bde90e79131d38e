INSERT INTO raw.defects BY NAME SELECT * FROM landing_defects;
