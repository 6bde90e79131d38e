-- Marts: partitioned aggregates rewritten per partition (DELETE + INSERT in one transaction).
CREATE SCHEMA IF NOT EXISTS marts;

CREATE TABLE IF NOT EXISTS marts.defect_rates (
    event_date         DATE        NOT NULL,
    defect_type        VARCHAR     NOT NULL,
    chips_inspected    BIGINT      NOT NULL,
    chips_with_defect  BIGINT      NOT NULL,
    defect_count       BIGINT      NOT NULL,
    defect_rate        DOUBLE      NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (event_date, defect_type)
);

COMMENT ON TABLE marts.defect_rates IS 'Per UTC day and defect type, over all non-canary INSPECTION_COMPLETED events of that day. A day without defects has no rows (see marts.daily_inspections).';
COMMENT ON COLUMN marts.defect_rates.event_date IS 'UTC day of the completed inspections (partition key).';
COMMENT ON COLUMN marts.defect_rates.defect_type IS 'Defect class.';
COMMENT ON COLUMN marts.defect_rates.chips_inspected IS 'Distinct chips with a completed inspection that day (same on every row of the day).';
COMMENT ON COLUMN marts.defect_rates.chips_with_defect IS 'Distinct chips with at least one defect of this type that day.';
COMMENT ON COLUMN marts.defect_rates.defect_count IS 'Defects of this type over all completed events of the day.';
COMMENT ON COLUMN marts.defect_rates.defect_rate IS 'chips_with_defect / chips_inspected.';
COMMENT ON COLUMN marts.defect_rates.updated_at IS 'When the day was last rewritten.';

CREATE TABLE IF NOT EXISTS marts.lot_quality_scores (
    lot_id                 VARCHAR     NOT NULL PRIMARY KEY,
    inspections_completed  BIGINT      NOT NULL,
    chips_inspected        BIGINT      NOT NULL,
    mean_quality_score     DOUBLE,
    min_quality_score      DOUBLE,
    pass_rate              DOUBLE      NOT NULL,
    pass_threshold         DOUBLE      NOT NULL,
    unscored_inspections   BIGINT      NOT NULL,
    defect_count           BIGINT      NOT NULL,
    defect_density         DOUBLE      NOT NULL,
    critical_defects       BIGINT      NOT NULL,
    first_event_time       TIMESTAMPTZ NOT NULL,
    last_event_time        TIMESTAMPTZ NOT NULL,
    updated_at             TIMESTAMPTZ NOT NULL
);

COMMENT ON TABLE marts.lot_quality_scores IS 'One row per lot, over the latest non-canary INSPECTION_COMPLETED event of each inspection (latest by event_time, ties by Kafka position).';
COMMENT ON COLUMN marts.lot_quality_scores.lot_id IS 'The lot (batch_id), verbatim; the partition key.';
COMMENT ON COLUMN marts.lot_quality_scores.inspections_completed IS 'Distinct inspections with a completed event.';
COMMENT ON COLUMN marts.lot_quality_scores.chips_inspected IS 'Distinct chips among those inspections.';
COMMENT ON COLUMN marts.lot_quality_scores.mean_quality_score IS 'Mean quality_score (NULL scores ignored; NULL if none scored).';
COMMENT ON COLUMN marts.lot_quality_scores.min_quality_score IS 'Lowest quality_score (NULL scores ignored).';
COMMENT ON COLUMN marts.lot_quality_scores.pass_rate IS 'Share of inspections with quality_score >= pass_threshold; an unscored inspection counts as not passed.';
COMMENT ON COLUMN marts.lot_quality_scores.pass_threshold IS 'The threshold pass_rate was computed with.';
COMMENT ON COLUMN marts.lot_quality_scores.unscored_inspections IS 'Completed inspections whose latest event has no quality_score.';
COMMENT ON COLUMN marts.lot_quality_scores.defect_count IS 'Defects on those latest completed events.';
COMMENT ON COLUMN marts.lot_quality_scores.defect_density IS 'defect_count / chips_inspected (defects per chip).';
COMMENT ON COLUMN marts.lot_quality_scores.critical_defects IS 'Defects with severity CRITICAL.';
COMMENT ON COLUMN marts.lot_quality_scores.first_event_time IS 'Earliest event_time among those latest completed events.';
COMMENT ON COLUMN marts.lot_quality_scores.last_event_time IS 'Latest event_time among those latest completed events.';
COMMENT ON COLUMN marts.lot_quality_scores.updated_at IS 'When the lot was last rewritten.';

-- Helper: inspection volume per day, including days without any defect.
CREATE OR REPLACE VIEW marts.daily_inspections AS
SELECT
    event_date,
    count(*) AS inspections_completed,
    count(DISTINCT chip_id) AS chips_inspected
FROM raw.inspection_events
WHERE event_type = 'INSPECTION_COMPLETED' AND NOT is_canary
GROUP BY event_date;

COMMENT ON VIEW marts.daily_inspections IS 'Per UTC day: completed non-canary inspection events and distinct chips (live view over raw).';
