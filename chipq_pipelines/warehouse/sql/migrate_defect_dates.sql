-- Once, when raw.defects gains event_date: copy it from each defect's inspection event.
UPDATE raw.defects AS d SET event_date = e.event_date
FROM raw.inspection_events AS e
WHERE d.event_id = e.event_id;
