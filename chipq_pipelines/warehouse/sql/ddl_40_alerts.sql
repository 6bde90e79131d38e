-- Alerts: the threshold-violation outbox, the evaluation watermarks, the frozen SPC baseline
-- and end-to-end canaries. Idempotent: every statement can run again on an existing warehouse.
CREATE SCHEMA IF NOT EXISTS ops;

CREATE TABLE IF NOT EXISTS ops.alert_outbox (
    event_id          VARCHAR     NOT NULL PRIMARY KEY,
    event_type        VARCHAR     NOT NULL DEFAULT 'THRESHOLD_VIOLATED',
    episode           INTEGER     NOT NULL DEFAULT 1,
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

COMMENT ON TABLE ops.alert_outbox IS 'Threshold alerts waiting for (or done with) publication on chip-quality.quality.events: THRESHOLD_VIOLATED (event_id a uuid5 of rule, level, scope, partition, rules version and episode) and THRESHOLD_CLEARED (uuid5 of rule, subject and episode). Also holds chipq''s alert events found on the quality topic (a rebuilt warehouse), so it is the alert history.';
COMMENT ON COLUMN ops.alert_outbox.event_id IS 'Deterministic event id; a re-send reuses it, so consumers dedupe; found on the quality topic, never sent again.';
COMMENT ON COLUMN ops.alert_outbox.event_type IS 'THRESHOLD_VIOLATED or THRESHOLD_CLEARED (quality schema v3).';
COMMENT ON COLUMN ops.alert_outbox.episode IS 'Episode of the rule on this subject: 1, then 2 after a THRESHOLD_CLEARED and a new violation, ...';
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
COMMENT ON COLUMN ops.alert_outbox.detected_at IS 'When the violation (or clearance) was first found (also the event_time of the published event).';
COMMENT ON COLUMN ops.alert_outbox.published_at IS 'When Kafka acknowledged the event (or it was found on the quality topic); NULL while unpublished.';
COMMENT ON COLUMN ops.alert_outbox.change_seq IS 'ops.change_seq at the row''s last change (insert, send attempt, publication).';
COMMENT ON COLUMN ops.alert_outbox.publish_attempts IS 'How many publish runs sent it (more than 1 after a crash between send and mark).';
COMMENT ON COLUMN ops.alert_outbox.kafka_partition IS 'Partition of the acknowledged event.';
COMMENT ON COLUMN ops.alert_outbox.kafka_offset IS 'Offset of the acknowledged event.';

CREATE TABLE IF NOT EXISTS ops.alert_state (
    name           VARCHAR     NOT NULL PRIMARY KEY,
    watermark      TIMESTAMPTZ,
    rules_version  VARCHAR,
    updated_at     TIMESTAMPTZ NOT NULL,
    landing_seq    BIGINT
);

COMMENT ON TABLE ops.alert_state IS 'Per mart (lots, days): the newest updated_at already evaluated, and under which rules; quality_topic: how far raw.quality_events was searched for chipq''s own alert events.';

CREATE TABLE IF NOT EXISTS ops.alert_fence (
    topic              VARCHAR     NOT NULL,
    partition          INTEGER     NOT NULL,
    end_offset         BIGINT      NOT NULL,
    covers_change_seq  BIGINT      NOT NULL,
    taken_at           TIMESTAMPTZ NOT NULL,
    reason             VARCHAR     NOT NULL,
    PRIMARY KEY (topic, partition)
);

COMMENT ON TABLE ops.alert_fence IS 'Kafka end offsets alerts wait for: taken when this warehouse first evaluates (events of the warehouse it replaces lie below) and after an unfinished publish; no alert is evaluated or published until ops.ingested_offsets reaches them.';
COMMENT ON COLUMN ops.alert_fence.topic IS 'Kafka topic (inspection and quality topics).';
COMMENT ON COLUMN ops.alert_fence.partition IS 'Kafka partition.';
COMMENT ON COLUMN ops.alert_fence.end_offset IS 'High watermark when the fence was taken: landing must reach it.';
COMMENT ON COLUMN ops.alert_fence.covers_change_seq IS 'Outbox sends up to this ops.change_seq are below the fence (a later unfinished send takes a new one).';
COMMENT ON COLUMN ops.alert_fence.taken_at IS 'When the end offsets were read.';
COMMENT ON COLUMN ops.alert_fence.reason IS 'Why: a new warehouse, or a send whose acknowledgement was not recorded.';

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
    v.detected_at,
    v.alert_level,
    v.rule,
    v.scope,
    coalesce(v.lot_id, strftime(v.event_date, '%Y-%m-%d') || coalesce(' / ' || v.defect_type, '')) AS subject,
    v.observed_value,
    v.threshold,
    v.message,
    v.published_at IS NOT NULL AS published,
    v.published_at,
    v.lot_id,
    v.event_date,
    v.defect_type,
    v.rules_version,
    v.event_id,
    v.episode,
    CASE WHEN c.event_id IS NULL THEN 'open' ELSE 'cleared' END AS state,
    c.detected_at AS cleared_at,
    c.event_id AS cleared_event_id
FROM ops.alert_outbox AS v
LEFT JOIN ops.alert_outbox AS c
    ON c.event_type = 'THRESHOLD_CLEARED' AND c.rule = v.rule AND c.scope = v.scope AND c.episode = v.episode
   AND c.lot_id IS NOT DISTINCT FROM v.lot_id AND c.event_date IS NOT DISTINCT FROM v.event_date
   AND c.defect_type IS NOT DISTINCT FROM v.defect_type
WHERE v.event_type = 'THRESHOLD_VIOLATED';

COMMENT ON VIEW ops.alerts IS 'Threshold violations for analysts: newest first with ORDER BY detected_at DESC; subject is the lot, or the day (and defect type); state open or cleared (a THRESHOLD_CLEARED ended its episode).';

COMMENT ON COLUMN ops.alert_state.name IS 'lots (marts.lot_quality_scores) or days (marts.defect_rates).';
COMMENT ON COLUMN ops.alert_state.watermark IS 'Newest mart updated_at already evaluated; rows rewritten later are evaluated next.';
COMMENT ON COLUMN ops.alert_state.rules_version IS 'Rules version and file digest of that evaluation; a different one re-evaluates everything.';
COMMENT ON COLUMN ops.alert_state.updated_at IS 'When the watermark last moved.';
COMMENT ON COLUMN ops.alert_state.landing_seq IS 'quality_topic row: newest raw.quality_events landing_seq searched for chipq''s alert events.';

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
COMMENT ON COLUMN ops.alerts.episode IS 'Episode of the rule on this subject (2 = broken again after a clearance).';
COMMENT ON COLUMN ops.alerts.state IS 'open, or cleared once the subject stopped breaking the rule.';
COMMENT ON COLUMN ops.alerts.cleared_at IS 'When the clearance was found.';
COMMENT ON COLUMN ops.alerts.cleared_event_id IS 'The THRESHOLD_CLEARED event id.';
