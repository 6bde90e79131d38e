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
