-- chipq's own alert events (metadata source = $source and correlation id chipq-alert-<event_id>) landed from
-- the quality topic with landing_seq in ($since, $until]. A row the outbox holds unpublished is marked
-- published with the coordinates found there (its event is on the topic: never sent again); an event the
-- outbox lacks (sent by the warehouse this one replaces) is added as published, so its episode counts.
-- change_seq ($change_seq) marks the rows as changed for the analysts' view.
INSERT INTO ops.alert_outbox AS o BY NAME
SELECT
    q.event_id,
    q.event_type,
    coalesce(TRY_CAST(q.metadata['episode'] AS INTEGER), 1) AS episode,
    q.rule,
    coalesce(q.metadata['rules_version'], q.model_version, '') AS rules_version,
    q.scope,
    q.batch_id AS lot_id,
    q.event_date,
    q.defect_type,
    coalesce(q.alert_level, 'WARNING') AS alert_level,
    coalesce(q.threshold, CAST('NaN' AS DOUBLE)) AS threshold,
    coalesce(q.observed_value, CAST('NaN' AS DOUBLE)) AS observed_value,
    coalesce(q.metadata['message'], '') AS message,
    q.event_time AS detected_at,
    coalesce(q.kafka_timestamp, q.ingested_at) AS published_at,
    q.kafka_partition,
    q.kafka_offset,
    CAST($change_seq AS BIGINT) AS change_seq
FROM raw.quality_events AS q
WHERE q.landing_seq > CAST($since AS BIGINT) AND q.landing_seq <= CAST($until AS BIGINT)
  AND q.event_type IN ('THRESHOLD_VIOLATED', 'THRESHOLD_CLEARED')
  AND q.rule IS NOT NULL
  AND q.metadata['source'] = $source
  AND q.correlation_id = 'chipq-alert-' || q.event_id
ON CONFLICT (event_id) DO UPDATE SET
    published_at = excluded.published_at,
    kafka_partition = excluded.kafka_partition,
    kafka_offset = excluded.kafka_offset,
    change_seq = excluded.change_seq
WHERE o.published_at IS NULL
RETURNING event_id;
