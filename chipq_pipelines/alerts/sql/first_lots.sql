-- The first $limit lots of marts.lot_quality_scores in SPC time order (first_event_time, then lot_id):
-- the candidates a first SPC baseline is frozen from.
SELECT
    lot_id, inspections_completed, chips_inspected, mean_quality_score, min_quality_score, pass_rate,
    defect_count, defect_density, critical_defects, first_event_time, updated_at
FROM marts.lot_quality_scores
ORDER BY first_event_time, lot_id
LIMIT $limit;
