-- Alerts: the threshold-violation outbox, the evaluation watermarks, the frozen SPC baseline
-- and end-to-end canaries. Idempotent: every statement can run again on an existing warehouse.
CREATE SCHEMA IF NOT EXISTS ops;

CREATE TABLE IF NOT EXISTS ops.alert_outbox (
    event_id          VARCHAR     NOT NULL PRIMARY KEY,
    rule              VARCHAR     NOT NULL,
    rules_version     VARCHAR     NOT NULL,
    scope             VARCHAR     NOT NULL,
    lot_id            VARCHAR,
    event_date        DATE,
    defect_type       VARCHAR,
    alert_level       VARCHAR     NOT NULL,
    threshold         DOUBLE      NOT NULL,
    observed_value    DOUBLE      NOT NULL,
    message           VARCHAR     NOT NULL,
    detected_at       TIMESTAMPTZ NOT NULL,
    published_at      TIMESTAMPTZ,
    publish_attempts  INTEGER     NOT NULL DEFAULT 0,
    kafka_partition   INTEGER,
    kafka_offset      BIGINT,
    change_seq        BIGINT
);

COMMENT ON TABLE ops.alert_outbox IS 'Threshold violations waiting for (or done with) publication as THRESHOLD_VIOLATED on chip-quality.quality.events. One row per fact: event_id is a uuid5 of rule, level, scope, partition and rules version.';
COMMENT ON COLUMN ops.alert_outbox.event_id IS 'Deterministic THRESHOLD_VIOLATED event id; a re-send after a crash reuses it, so consumers dedupe.';
COMMENT ON COLUMN ops.alert_outbox.rule IS 'The rule that fired (lot_mean_score, daily_defect_rate, spc_we1_beyond_3sigma, ...).';
COMMENT ON COLUMN ops.alert_outbox.rules_version IS 'version of the rules file (SPC rules: plus the baseline id, e.g. 1+b1).';
COMMENT ON COLUMN ops.alert_outbox.scope IS 'LOT or DAY.';
COMMENT ON COLUMN ops.alert_outbox.lot_id IS 'The lot, for LOT scope.';
COMMENT ON COLUMN ops.alert_outbox.event_date IS 'The UTC day, for DAY scope.';
COMMENT ON COLUMN ops.alert_outbox.defect_type IS 'The defect type, for per-defect-type DAY rules.';
COMMENT ON COLUMN ops.alert_outbox.alert_level IS 'WARNING or CRITICAL.';
COMMENT ON COLUMN ops.alert_outbox.threshold IS 'The limit that was crossed.';
COMMENT ON COLUMN ops.alert_outbox.observed_value IS 'The value that crossed it.';
COMMENT ON COLUMN ops.alert_outbox.message IS 'Human-readable: what was compared with what.';
COMMENT ON COLUMN ops.alert_outbox.detected_at IS 'When the violation was first found (also the event_time of the published event).';
COMMENT ON COLUMN ops.alert_outbox.published_at IS 'When Kafka acknowledged the event; NULL while unpublished.';
COMMENT ON COLUMN ops.alert_outbox.change_seq IS 'ops.change_seq at the row''s last change (insert, send attempt, publication).';
COMMENT ON COLUMN ops.alert_outbox.publish_attempts IS 'How many publish runs sent it (more than 1 after a crash between send and mark).';
COMMENT ON COLUMN ops.alert_outbox.kafka_partition IS 'Partition of the acknowledged event.';
COMMENT ON COLUMN ops.alert_outbox.kafka_offset IS 'Offset of the acknowledged event.';

CREATE TABLE IF NOT EXISTS ops.alert_state (
    name           VARCHAR     NOT NULL PRIMARY KEY,
    watermark      TIMESTAMPTZ,
    rules_version  VARCHAR,
    updated_at     TIMESTAMPTZ NOT NULL
);

COMMENT ON TABLE ops.alert_state IS 'Per mart (lots, days): the newest updated_at already evaluated, and under which rules.';

CREATE TABLE IF NOT EXISTS ops.spc_baseline (
    baseline_id      INTEGER     NOT NULL PRIMARY KEY,
    source           VARCHAR     NOT NULL,
    mean_score       DOUBLE      NOT NULL,
    sigma_score      DOUBLE      NOT NULL,
    u_bar            DOUBLE      NOT NULL,
    p_bar            DOUBLE      NOT NULL,
    lot_count        INTEGER     NOT NULL,
    lot_ids          VARCHAR[]   NOT NULL,
    removed_lot_ids  VARCHAR[]   NOT NULL,
    frozen_at        TIMESTAMPTZ NOT NULL
);

COMMENT ON TABLE ops.spc_baseline IS 'Frozen SPC centre lines (the newest baseline_id is in force). Computed once from the first in-control lots, or copied from the rules file; delete the rows to re-freeze.';

CREATE TABLE IF NOT EXISTS ops.canaries (
    event_id      VARCHAR     NOT NULL PRIMARY KEY,
    inspection_id VARCHAR     NOT NULL,
    published_at  TIMESTAMPTZ NOT NULL,
    kafka_partition INTEGER   NOT NULL,
    kafka_offset  BIGINT      NOT NULL,
    run_id        VARCHAR     NOT NULL,
    change_seq    BIGINT
);

COMMENT ON TABLE ops.canaries IS 'End-to-end canary inspection events published by the e2e_canary asset (metadata chipq_canary = true).';

CREATE OR REPLACE VIEW ops.alerts AS
SELECT
    detected_at,
    alert_level,
    rule,
    scope,
    coalesce(lot_id, strftime(event_date, '%Y-%m-%d') || coalesce(' / ' || defect_type, '')) AS subject,
    observed_value,
    threshold,
    message,
    published_at IS NOT NULL AS published,
    published_at,
    lot_id,
    event_date,
    defect_type,
    rules_version,
    event_id
FROM ops.alert_outbox;

COMMENT ON VIEW ops.alerts IS 'Threshold violations for analysts: newest first with ORDER BY detected_at DESC; subject is the lot, or the day (and defect type).';

COMMENT ON COLUMN ops.alert_state.name IS 'lots (marts.lot_quality_scores) or days (marts.defect_rates).';
COMMENT ON COLUMN ops.alert_state.watermark IS 'Newest mart updated_at already evaluated; rows rewritten later are evaluated next.';
COMMENT ON COLUMN ops.alert_state.rules_version IS 'Rules version and file digest of that evaluation; a different one re-evaluates everything.';
COMMENT ON COLUMN ops.alert_state.updated_at IS 'When the watermark last moved.';

COMMENT ON COLUMN ops.spc_baseline.baseline_id IS 'Baseline number (1, 2, ...); part of every SPC alert''s rules_version (1+b1).';
COMMENT ON COLUMN ops.spc_baseline.source IS 'computed: from the first in-control lots (a baseline set in the rules file is not stored).';
COMMENT ON COLUMN ops.spc_baseline.mean_score IS 'Centre line of lot mean quality scores (mu).';
COMMENT ON COLUMN ops.spc_baseline.sigma_score IS 'Standard deviation of baseline lot means (sigma), floored at spc.min_sigma.';
COMMENT ON COLUMN ops.spc_baseline.u_bar IS 'Baseline defects per chip (u-chart centre line).';
COMMENT ON COLUMN ops.spc_baseline.p_bar IS 'Baseline failing fraction of inspections (p-chart centre line).';
COMMENT ON COLUMN ops.spc_baseline.lot_count IS 'Lots the centre lines were computed from.';
COMMENT ON COLUMN ops.spc_baseline.lot_ids IS 'Those lots.';
COMMENT ON COLUMN ops.spc_baseline.removed_lot_ids IS 'Lots of the window removed as special causes (outside their 3-sigma limits).';
COMMENT ON COLUMN ops.spc_baseline.frozen_at IS 'When the baseline was frozen.';

COMMENT ON COLUMN ops.canaries.event_id IS 'The canary INSPECTION_COMPLETED event id; look for it in raw.inspection_events.';
COMMENT ON COLUMN ops.canaries.inspection_id IS 'The canary''s inspection id (canary-<uuid>, lot chipq-canary).';
COMMENT ON COLUMN ops.canaries.published_at IS 'When Kafka acknowledged the canary; the SLA is measured from here.';
COMMENT ON COLUMN ops.canaries.kafka_partition IS 'Partition of the inspection topic it went to.';
COMMENT ON COLUMN ops.canaries.kafka_offset IS 'Its offset.';
COMMENT ON COLUMN ops.canaries.run_id IS 'The Dagster run that published it (that run''s check judges the previous canary).';
COMMENT ON COLUMN ops.canaries.change_seq IS 'ops.change_seq when the canary was recorded (the analysts'' view copies newer ones).';

COMMENT ON COLUMN ops.alerts.detected_at IS 'When the violation was found.';
COMMENT ON COLUMN ops.alerts.alert_level IS 'WARNING or CRITICAL.';
COMMENT ON COLUMN ops.alerts.rule IS 'The rule that fired.';
COMMENT ON COLUMN ops.alerts.scope IS 'LOT or DAY.';
COMMENT ON COLUMN ops.alerts.subject IS 'The lot id, or the day (and defect type) for DAY scope.';
COMMENT ON COLUMN ops.alerts.observed_value IS 'The value that crossed the limit.';
COMMENT ON COLUMN ops.alerts.threshold IS 'The limit it crossed.';
COMMENT ON COLUMN ops.alerts.message IS 'What was compared with what, in words.';
COMMENT ON COLUMN ops.alerts.published IS 'True once Kafka acknowledged the THRESHOLD_VIOLATED event.';
COMMENT ON COLUMN ops.alerts.published_at IS 'When it was acknowledged.';
COMMENT ON COLUMN ops.alerts.lot_id IS 'The lot (LOT scope).';
COMMENT ON COLUMN ops.alerts.event_date IS 'The UTC day (DAY scope).';
COMMENT ON COLUMN ops.alerts.defect_type IS 'The defect type (per-type DAY rules).';
COMMENT ON COLUMN ops.alerts.rules_version IS 'Rules version (SPC: plus baseline).';
COMMENT ON COLUMN ops.alerts.event_id IS 'The THRESHOLD_VIOLATED event id on chip-quality.quality.events.';
