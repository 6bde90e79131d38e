INSERT INTO raw.quality_events BY NAME SELECT * FROM landing_quality_events;
