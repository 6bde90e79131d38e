-- The lots in $lots of marts.lot_quality_scores in SPC time order (a frozen baseline's own lots).
SELECT
    lot_id, inspections_completed, chips_inspected, mean_quality_score, min_quality_score, pass_rate,
    defect_count, defect_density, critical_defects, first_event_time, updated_at
FROM marts.lot_quality_scores
WHERE lot_id IN (SELECT unnest(CAST($lots AS VARCHAR[])))
ORDER BY first_event_time, lot_id;
