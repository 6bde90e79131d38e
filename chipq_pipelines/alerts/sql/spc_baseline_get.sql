-- The SPC baseline in force: the newest frozen one.
SELECT baseline_id, source, mean_score, sigma_score, u_bar, p_bar, lot_ids, removed_lot_ids, frozen_at
FROM ops.spc_baseline
ORDER BY baseline_id DESC
LIMIT 1;
