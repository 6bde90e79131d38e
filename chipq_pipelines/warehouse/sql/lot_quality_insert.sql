-- Quality scores of the lots in $lots, whose rows lie on the days $days, over the
-- latest non-canary INSPECTION_COMPLETED event of each inspection (latest by event_time,
-- ties broken by Kafka position, then event_id, so the choice is deterministic).
-- pass_rate: share of those inspections with quality_score >= $pass_threshold; an
-- inspection completed without a score has not shown it passes, so it counts as failed.
INSERT INTO marts.lot_quality_scores
WITH latest AS (
    SELECT event_id, batch_id, inspection_id, chip_id, quality_score, event_time
    FROM raw.inspection_events
    WHERE event_type = 'INSPECTION_COMPLETED'
      AND NOT is_canary
      AND event_date = ANY(CAST($days AS DATE[]))
      AND batch_id IN (SELECT unnest(CAST($lots AS VARCHAR[])))
    QUALIFY row_number() OVER (
        PARTITION BY batch_id, inspection_id
        ORDER BY event_time DESC, kafka_topic DESC, kafka_partition DESC, kafka_offset DESC, event_id DESC
    ) = 1
),
defects_per_event AS (
    SELECT
        d.event_id,
        count(*) AS defect_count,
        count(*) FILTER (WHERE d.severity = 'CRITICAL') AS critical_defects
    FROM raw.defects AS d
    SEMI JOIN latest AS l USING (event_id)
    WHERE d.event_date = ANY(CAST($days AS DATE[]))
    GROUP BY d.event_id
)
SELECT
    l.batch_id AS lot_id,
    count(*) AS inspections_completed,
    count(DISTINCT l.chip_id) AS chips_inspected,
    -- exact DECIMAL sum: a float sum depends on the plan's order, and a rewrite must be bit-identical
    CAST(avg(CAST(l.quality_score AS DECIMAL(18, 15))) AS DOUBLE) AS mean_quality_score,
    min(l.quality_score) AS min_quality_score,
    count(*) FILTER (WHERE l.quality_score >= CAST($pass_threshold AS DOUBLE)) / count(*) AS pass_rate,
    CAST($pass_threshold AS DOUBLE) AS pass_threshold,
    count(*) FILTER (WHERE l.quality_score IS NULL) AS unscored_inspections,
    coalesce(sum(d.defect_count), 0) AS defect_count,
    coalesce(sum(d.defect_count), 0) / count(DISTINCT l.chip_id) AS defect_density,
    coalesce(sum(d.critical_defects), 0) AS critical_defects,
    min(l.event_time) AS first_event_time,
    max(l.event_time) AS last_event_time,
    now() AS updated_at
FROM latest AS l
LEFT JOIN defects_per_event AS d USING (event_id)
GROUP BY l.batch_id;
