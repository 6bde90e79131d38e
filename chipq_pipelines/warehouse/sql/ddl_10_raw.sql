-- Raw landing tables: one row per Kafka event, exactly as decoded, plus where it was read.
-- Idempotent: every statement can run again on an existing warehouse.
CREATE SCHEMA IF NOT EXISTS raw;

-- No PRIMARY KEY on event_id: it costs ~45 % of the landing rate and doubles the file
-- (field notes). land_batch guarantees one row per event_id; a data-quality check verifies it.
CREATE TABLE IF NOT EXISTS raw.inspection_events (
    event_id         VARCHAR     NOT NULL,
    event_type       VARCHAR     NOT NULL,
    event_time       TIMESTAMPTZ NOT NULL,
    event_date       DATE        NOT NULL,
    correlation_id   VARCHAR,
    inspection_id    VARCHAR     NOT NULL,
    batch_id         VARCHAR     NOT NULL,
    chip_id          VARCHAR     NOT NULL,
    wafer_id         VARCHAR,
    station_id       VARCHAR,
    inspection_type  VARCHAR     NOT NULL,
    status           VARCHAR     NOT NULL,
    quality_score    DOUBLE,
    defect_count     INTEGER     NOT NULL,
    metadata         MAP(VARCHAR, VARCHAR),
    recipe_id        VARCHAR,
    is_canary        BOOLEAN     NOT NULL,
    kafka_topic      VARCHAR     NOT NULL,
    kafka_partition  INTEGER     NOT NULL,
    kafka_offset     BIGINT      NOT NULL,
    kafka_timestamp  TIMESTAMPTZ,
    ingested_at      TIMESTAMPTZ NOT NULL,
    landing_seq      BIGINT
);

COMMENT ON TABLE raw.inspection_events IS 'One row per inspection event (event_id unique), as published on chip-quality.inspection.events. Defects are in raw.defects.';
COMMENT ON COLUMN raw.inspection_events.event_id IS 'Unique event id (uuid text); producer retries keep it, so it deduplicates.';
COMMENT ON COLUMN raw.inspection_events.event_type IS 'INSPECTION_CREATED or INSPECTION_COMPLETED.';
COMMENT ON COLUMN raw.inspection_events.event_time IS 'When it happened (UTC instant).';
COMMENT ON COLUMN raw.inspection_events.event_date IS 'UTC calendar date of event_time; the defect_rates partition key.';
COMMENT ON COLUMN raw.inspection_events.correlation_id IS 'Id tying together events of one business flow ('''' when unset).';
COMMENT ON COLUMN raw.inspection_events.inspection_id IS 'The inspection; its CREATED and COMPLETED events share it (Kafka key).';
COMMENT ON COLUMN raw.inspection_events.batch_id IS 'The lot id (verbatim; may contain any characters).';
COMMENT ON COLUMN raw.inspection_events.chip_id IS 'The inspected chip (die).';
COMMENT ON COLUMN raw.inspection_events.wafer_id IS 'The wafer, when known.';
COMMENT ON COLUMN raw.inspection_events.station_id IS 'The inspection station, when known.';
COMMENT ON COLUMN raw.inspection_events.inspection_type IS 'Kind of inspection (e.g. optical, e-beam).';
COMMENT ON COLUMN raw.inspection_events.status IS 'Status reported by the inspection service.';
COMMENT ON COLUMN raw.inspection_events.quality_score IS 'In [0, 1]; NULL until completed.';
COMMENT ON COLUMN raw.inspection_events.defect_count IS 'Number of defects in the event (rows in raw.defects).';
COMMENT ON COLUMN raw.inspection_events.metadata IS 'Free-form string map from the producer; read with metadata[''key''].';
COMMENT ON COLUMN raw.inspection_events.recipe_id IS 'Process recipe (schema v2; NULL for v1 events).';
COMMENT ON COLUMN raw.inspection_events.is_canary IS 'True for end-to-end canary events (metadata chipq_canary = ''true''); excluded from marts. Only events of lot chipq-canary count: a mark on a real lot''s event is ignored.';
COMMENT ON COLUMN raw.inspection_events.kafka_topic IS 'Topic the event was read from.';
COMMENT ON COLUMN raw.inspection_events.kafka_partition IS 'Kafka partition.';
COMMENT ON COLUMN raw.inspection_events.kafka_offset IS 'Kafka offset within the partition.';
COMMENT ON COLUMN raw.inspection_events.kafka_timestamp IS 'Broker/producer record timestamp, when present.';
COMMENT ON COLUMN raw.inspection_events.ingested_at IS 'When the warehouse landed the event.';
COMMENT ON COLUMN raw.inspection_events.landing_seq IS 'Number of the landing transaction that wrote the row (ops.change_seq; increases with every landing).';

CREATE TABLE IF NOT EXISTS raw.defects (
    event_id      VARCHAR NOT NULL,
    defect_index  INTEGER NOT NULL,
    defect_type   VARCHAR NOT NULL,
    severity      VARCHAR NOT NULL,
    confidence    DOUBLE  NOT NULL,
    x             DOUBLE  NOT NULL,
    y             DOUBLE  NOT NULL,
    event_date    DATE,
    landing_seq   BIGINT
);

COMMENT ON TABLE raw.defects IS 'One row per defect of an inspection event; join to raw.inspection_events on event_id.';
COMMENT ON COLUMN raw.defects.event_id IS 'The inspection event carrying the defect.';
COMMENT ON COLUMN raw.defects.defect_index IS 'Position of the defect in the event''s list (0-based).';
COMMENT ON COLUMN raw.defects.defect_type IS 'Defect class (e.g. scratch, edge-ring).';
COMMENT ON COLUMN raw.defects.severity IS 'LOW, MEDIUM, HIGH or CRITICAL.';
COMMENT ON COLUMN raw.defects.confidence IS 'Classifier confidence in [0, 1].';
COMMENT ON COLUMN raw.defects.x IS 'Defect location, x.';
COMMENT ON COLUMN raw.defects.y IS 'Defect location, y.';
COMMENT ON COLUMN raw.defects.event_date IS 'UTC date of the inspection event''s event_time (copied so that a day''s defects are read without scanning history).';
COMMENT ON COLUMN raw.defects.landing_seq IS 'Number of the landing transaction that wrote the row.';

CREATE TABLE IF NOT EXISTS raw.quality_events (
    event_id         VARCHAR     NOT NULL,
    event_type       VARCHAR     NOT NULL,
    event_time       TIMESTAMPTZ NOT NULL,
    correlation_id   VARCHAR,
    scope            VARCHAR     NOT NULL,
    inspection_id    VARCHAR,
    batch_id         VARCHAR,
    chip_id          VARCHAR,
    event_date       DATE,
    defect_type      VARCHAR,
    rule             VARCHAR,
    threshold        DOUBLE,
    observed_value   DOUBLE,
    quality_score    DOUBLE,
    pass_fail        BOOLEAN,
    alert_level      VARCHAR,
    metadata         MAP(VARCHAR, VARCHAR),
    model_version    VARCHAR,
    is_canary        BOOLEAN     NOT NULL,
    kafka_topic      VARCHAR     NOT NULL,
    kafka_partition  INTEGER     NOT NULL,
    kafka_offset     BIGINT      NOT NULL,
    kafka_timestamp  TIMESTAMPTZ,
    ingested_at      TIMESTAMPTZ NOT NULL,
    landing_seq      BIGINT
);

COMMENT ON TABLE raw.quality_events IS 'One row per quality event (event_id unique): assessments and threshold violations from chip-quality.quality.events.';
COMMENT ON COLUMN raw.quality_events.event_id IS 'Unique event id (uuid text).';
COMMENT ON COLUMN raw.quality_events.event_type IS 'QUALITY_ASSESSED, THRESHOLD_VIOLATED or THRESHOLD_CLEARED (quality schema v3).';
COMMENT ON COLUMN raw.quality_events.event_time IS 'When it happened (UTC instant).';
COMMENT ON COLUMN raw.quality_events.correlation_id IS 'Id tying together events of one business flow.';
COMMENT ON COLUMN raw.quality_events.scope IS 'INSPECTION, LOT or DAY: what the event is about.';
COMMENT ON COLUMN raw.quality_events.inspection_id IS 'The inspection (NULL for LOT and DAY scope).';
COMMENT ON COLUMN raw.quality_events.batch_id IS 'The lot id (NULL for DAY scope).';
COMMENT ON COLUMN raw.quality_events.chip_id IS 'The chip, when the event is about one.';
COMMENT ON COLUMN raw.quality_events.event_date IS 'The UTC day a DAY-scope event is about (from the event''s YYYY-MM-DD field).';
COMMENT ON COLUMN raw.quality_events.defect_type IS 'Defect class for per-defect-type rules.';
COMMENT ON COLUMN raw.quality_events.rule IS 'The rule that was evaluated.';
COMMENT ON COLUMN raw.quality_events.threshold IS 'The rule''s threshold.';
COMMENT ON COLUMN raw.quality_events.observed_value IS 'The value compared with the threshold.';
COMMENT ON COLUMN raw.quality_events.quality_score IS 'In [0, 1], when assessed.';
COMMENT ON COLUMN raw.quality_events.pass_fail IS 'True = passed, false = failed, NULL = not decided.';
COMMENT ON COLUMN raw.quality_events.alert_level IS 'WARNING or CRITICAL for violations.';
COMMENT ON COLUMN raw.quality_events.metadata IS 'Free-form string map from the producer.';
COMMENT ON COLUMN raw.quality_events.model_version IS 'Rule set / model version (schema v2; NULL for v1 events).';
COMMENT ON COLUMN raw.quality_events.is_canary IS 'True for end-to-end canary events (lot chipq-canary, metadata chipq_canary = ''true'').';
COMMENT ON COLUMN raw.quality_events.kafka_topic IS 'Topic the event was read from.';
COMMENT ON COLUMN raw.quality_events.kafka_partition IS 'Kafka partition.';
COMMENT ON COLUMN raw.quality_events.kafka_offset IS 'Kafka offset within the partition.';
COMMENT ON COLUMN raw.quality_events.kafka_timestamp IS 'Broker/producer record timestamp, when present.';
COMMENT ON COLUMN raw.quality_events.ingested_at IS 'When the warehouse landed the event.';
COMMENT ON COLUMN raw.quality_events.landing_seq IS 'Number of the landing transaction that wrote the row (ops.change_seq; increases with every landing).';
