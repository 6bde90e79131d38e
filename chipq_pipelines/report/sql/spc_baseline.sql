-- The frozen SPC baseline in force (newest baseline_id), as the alerts domain stores it.
SELECT baseline_id, source, mean_score, sigma_score, u_bar, p_bar, lot_count, frozen_at
FROM ops.spc_baseline
ORDER BY baseline_id DESC
LIMIT 1;
