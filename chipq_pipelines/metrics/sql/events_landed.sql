-- Rows landed per raw table: count(*) without a filter is answered from the table's row count,
-- whatever the history (each raw table holds the events of one topic).
SELECT
    (SELECT count(*) FROM raw.inspection_events) AS inspection_events,
    (SELECT count(*) FROM raw.quality_events) AS quality_events;
