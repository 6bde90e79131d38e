-- Operational tables: Kafka offsets owned by the warehouse, and poison records.
CREATE SCHEMA IF NOT EXISTS ops;

CREATE TABLE IF NOT EXISTS ops.ingested_offsets (
    topic        VARCHAR     NOT NULL,
    partition    INTEGER     NOT NULL,
    next_offset  BIGINT      NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (topic, partition)
);

COMMENT ON TABLE ops.ingested_offsets IS 'Per topic partition, the next Kafka offset to read (last landed + 1); written in the same transaction as the rows.';
COMMENT ON COLUMN ops.ingested_offsets.topic IS 'Kafka topic.';
COMMENT ON COLUMN ops.ingested_offsets.partition IS 'Kafka partition.';
COMMENT ON COLUMN ops.ingested_offsets.next_offset IS 'Next offset to read: every offset below it is landed, rejected or was never present.';
COMMENT ON COLUMN ops.ingested_offsets.updated_at IS 'When the offset last moved.';

CREATE TABLE IF NOT EXISTS ops.rejected_events (
    topic        VARCHAR     NOT NULL,
    partition    INTEGER     NOT NULL,
    "offset"     BIGINT      NOT NULL,
    key          BLOB,
    raw          BLOB        NOT NULL,
    reason       VARCHAR     NOT NULL,
    rejected_at  TIMESTAMPTZ NOT NULL,
    landing_seq  BIGINT,
    PRIMARY KEY (topic, partition, "offset")
);

COMMENT ON TABLE ops.rejected_events IS 'Poison records: what could not be decoded or failed validation, with the raw bytes and why. Nothing is lost.';
COMMENT ON COLUMN ops.rejected_events.topic IS 'Kafka topic.';
COMMENT ON COLUMN ops.rejected_events.partition IS 'Kafka partition.';
COMMENT ON COLUMN ops.rejected_events."offset" IS 'Kafka offset (quote it: "offset").';
COMMENT ON COLUMN ops.rejected_events.key IS 'Record key bytes, as read.';
COMMENT ON COLUMN ops.rejected_events.raw IS 'Record value bytes as read (or the decoded event as JSON when the bytes were not kept).';
COMMENT ON COLUMN ops.rejected_events.reason IS 'Why it was rejected.';
COMMENT ON COLUMN ops.rejected_events.rejected_at IS 'When it was rejected.';
COMMENT ON COLUMN ops.rejected_events.landing_seq IS 'Number of the landing transaction that wrote the row.';

-- Identity of this warehouse file: a snapshot copy made from another one is rebuilt whole.
CREATE TABLE IF NOT EXISTS ops.warehouse_info (
    warehouse_id  VARCHAR     NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL
);
INSERT INTO ops.warehouse_info SELECT CAST(uuid() AS VARCHAR), now() WHERE NOT EXISTS (SELECT 1 FROM ops.warehouse_info);

COMMENT ON TABLE ops.warehouse_info IS 'One row: the identity of this warehouse (a rebuilt warehouse gets a new one).';
COMMENT ON COLUMN ops.warehouse_info.warehouse_id IS 'Random id chosen when the warehouse file was created.';
COMMENT ON COLUMN ops.warehouse_info.created_at IS 'When the warehouse file was created.';

-- Offsets that were never read: deleted from Kafka (retention, delete_records) before they landed.
CREATE TABLE IF NOT EXISTS ops.offset_gaps (
    topic            VARCHAR     NOT NULL,
    partition        INTEGER     NOT NULL,
    first_offset     BIGINT      NOT NULL,
    last_offset      BIGINT      NOT NULL,
    detected_at      TIMESTAMPTZ NOT NULL,
    acknowledged_at  TIMESTAMPTZ,
    acknowledged_by  VARCHAR,
    note             VARCHAR,
    PRIMARY KEY (topic, partition, first_offset)
);

COMMENT ON TABLE ops.offset_gaps IS 'One row per range of Kafka offsets deleted (retention, delete_records) before they landed: those records are lost to the warehouse. Written in the same transaction as the offsets that skip it; kafka_offsets_reconciled fails while a gap is not acknowledged (chipq gaps ack).';
COMMENT ON COLUMN ops.offset_gaps.topic IS 'Kafka topic.';
COMMENT ON COLUMN ops.offset_gaps.partition IS 'Kafka partition.';
COMMENT ON COLUMN ops.offset_gaps.first_offset IS 'First offset of the range that was gone.';
COMMENT ON COLUMN ops.offset_gaps.last_offset IS 'Last offset of the range (inclusive): last_offset - first_offset + 1 offsets were never read.';
COMMENT ON COLUMN ops.offset_gaps.detected_at IS 'When ingest found the range gone (the landing that skipped it).';
COMMENT ON COLUMN ops.offset_gaps.acknowledged_at IS 'When an operator acknowledged the loss (chipq gaps ack); NULL while unacknowledged.';
COMMENT ON COLUMN ops.offset_gaps.acknowledged_by IS 'Who acknowledged it.';
COMMENT ON COLUMN ops.offset_gaps.note IS 'The operator''s note: why, and what was done (for example: replayed from the source system).';
