-- Defect rates of the UTC days in $days (one statement for all of them; zone maps skip other days).
-- Counts every non-canary INSPECTION_COMPLETED event of the day (raw is unique by event_id),
-- including repeated completions of one inspection: a chip counts once per day in
-- chips_inspected / chips_with_defect, every defect counts in defect_count.
INSERT INTO marts.defect_rates
WITH completed AS (
    SELECT event_id, event_date, chip_id
    FROM raw.inspection_events
    WHERE event_type = 'INSPECTION_COMPLETED'
      AND NOT is_canary
      AND event_date = ANY(CAST($days AS DATE[]))
),
inspected AS (
    SELECT event_date, count(DISTINCT chip_id) AS chips_inspected
    FROM completed
    GROUP BY event_date
),
by_type AS (
    SELECT
        c.event_date,
        d.defect_type,
        count(DISTINCT c.chip_id) AS chips_with_defect,
        count(*) AS defect_count
    FROM completed AS c
    JOIN (SELECT event_id, defect_type FROM raw.defects WHERE event_date = ANY(CAST($days AS DATE[]))) AS d
        USING (event_id)
    GROUP BY c.event_date, d.defect_type
)
SELECT
    t.event_date,
    t.defect_type,
    i.chips_inspected,
    t.chips_with_defect,
    t.defect_count,
    t.chips_with_defect / i.chips_inspected AS defect_rate,
    now() AS updated_at
FROM by_type AS t
JOIN inspected AS i USING (event_date);
