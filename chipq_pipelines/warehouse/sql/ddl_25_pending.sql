-- Mart partitions that landed rows touched and no rewrite has caught up with yet.
-- Written in the landing transaction and cleared in the rewrite's transaction, so a
-- run that crashes after landing cannot make the marts forget a day or a lot.
CREATE TABLE IF NOT EXISTS ops.pending_mart_partitions (
    mart          VARCHAR     NOT NULL,
    partition_key VARCHAR     NOT NULL,
    since         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (mart, partition_key)
);

COMMENT ON TABLE ops.pending_mart_partitions IS 'Mart partitions (defect_rates days, lot_quality_scores lots) with landed rows not yet rewritten into the mart.';
COMMENT ON COLUMN ops.pending_mart_partitions.mart IS 'defect_rates or lot_quality_scores.';
COMMENT ON COLUMN ops.pending_mart_partitions.partition_key IS 'The UTC event date (YYYY-MM-DD) or the lot id, verbatim.';
COMMENT ON COLUMN ops.pending_mart_partitions.since IS 'When rows for it first landed after its last rewrite.';

-- Change tracking: one sequence numbers every landing and every mart rewrite, so the
-- analysts' snapshot copies only what changed since it was last brought up to date,
-- and per-lot queries read only the days a lot has rows on (zone maps prune the rest).
CREATE SEQUENCE IF NOT EXISTS ops.change_seq START 1;

CREATE TABLE IF NOT EXISTS ops.mart_changes (
    mart          VARCHAR NOT NULL,
    partition_key VARCHAR NOT NULL,
    change_seq    BIGINT  NOT NULL,
    PRIMARY KEY (mart, partition_key)
);

COMMENT ON TABLE ops.mart_changes IS 'Last rewrite of each mart partition (defect_rates: day, lot_quality_scores: lot), numbered from ops.change_seq.';

CREATE TABLE IF NOT EXISTS ops.lot_days (
    lot_id      VARCHAR NOT NULL,
    event_date  DATE    NOT NULL,
    PRIMARY KEY (lot_id, event_date)
);

COMMENT ON TABLE ops.lot_days IS 'The UTC days on which each lot (batch_id) has inspection events: per-lot queries read only those days of raw.';
COMMENT ON COLUMN ops.mart_changes.mart IS 'defect_rates or lot_quality_scores.';
COMMENT ON COLUMN ops.mart_changes.partition_key IS 'The day (YYYY-MM-DD) or the lot id.';
COMMENT ON COLUMN ops.mart_changes.change_seq IS 'ops.change_seq when the partition was last rewritten.';
COMMENT ON COLUMN ops.lot_days.lot_id IS 'The lot (raw.inspection_events.batch_id).';
COMMENT ON COLUMN ops.lot_days.event_date IS 'A UTC day on which the lot has at least one inspection event.';
