INSERT INTO ops.spc_baseline
    (baseline_id, source, mean_score, sigma_score, u_bar, p_bar, lot_count, lot_ids, removed_lot_ids, frozen_at)
SELECT coalesce(max(baseline_id), 0) + 1, $source, $mean_score, $sigma_score, $u_bar, $p_bar, $lot_count,
       CAST($lot_ids AS VARCHAR[]), CAST($removed_lot_ids AS VARCHAR[]), now()
FROM ops.spc_baseline
RETURNING baseline_id;
