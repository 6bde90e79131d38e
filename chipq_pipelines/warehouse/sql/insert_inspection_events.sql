INSERT INTO raw.inspection_events BY NAME SELECT * FROM landing_inspection_events;
