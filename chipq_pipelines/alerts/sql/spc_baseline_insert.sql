-- A new frozen baseline. Its number is the next one, or, in a warehouse rebuilt from Kafka, the highest one
-- chipq's SPC alerts on the quality topic carry (rules_version 2+b3 -> 3: the outbox holds them by then), so
-- the baseline frozen again from the same first lots keeps its number and the alerts keep their event ids.
INSERT INTO ops.spc_baseline
    (baseline_id, source, mean_score, sigma_score, u_bar, p_bar, lot_count, lot_ids, removed_lot_ids, frozen_at)
SELECT greatest(
           coalesce(max(baseline_id), 0) + 1,
           (SELECT coalesce(max(TRY_CAST(regexp_extract(rules_version, '\+b([0-9]+)$', 1) AS INTEGER)), 0)
            FROM ops.alert_outbox)
       ),
       $source, $mean_score, $sigma_score, $u_bar, $p_bar, $lot_count,
       CAST($lot_ids AS VARCHAR[]), CAST($removed_lot_ids AS VARCHAR[]), now()
FROM ops.spc_baseline
RETURNING baseline_id;
