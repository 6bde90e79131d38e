-- Headline figures of the report: one row.
SELECT
    (SELECT count(*) FROM raw.inspection_events) AS inspection_events,
    (SELECT count(*) FROM raw.inspection_events
      WHERE event_type = 'INSPECTION_COMPLETED' AND NOT is_canary) AS inspections_completed,
    (SELECT count(*) FROM ops.rejected_events) AS rejected_events,
    (SELECT count(*) FROM marts.lot_quality_scores) AS lots_scored,
    (SELECT count(DISTINCT event_date) FROM marts.daily_inspections) AS days,
    (SELECT min(event_date) FROM marts.daily_inspections) AS first_day,
    (SELECT max(event_date) FROM marts.daily_inspections) AS last_day;
