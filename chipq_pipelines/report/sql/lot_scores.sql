-- Lots in SPC time order (first_event_time, then lot_id), with what the SPC rules read.
SELECT lot_id, first_event_time, mean_quality_score::DOUBLE AS mean_quality_score, pass_rate, defect_count,
       defect_density, critical_defects, chips_inspected, inspections_completed, unscored_inspections,
       min_quality_score
FROM marts.lot_quality_scores
ORDER BY first_event_time, lot_id;
