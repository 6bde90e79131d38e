SELECT lot_id, inspections_completed, chips_inspected, round(mean_quality_score, 4) AS mean_quality_score,
       round(pass_rate, 4) AS pass_rate, defect_count, round(defect_density, 4) AS defect_density, critical_defects
FROM marts.lot_quality_scores
WHERE lot_id IN (SELECT unnest(CAST($lots AS VARCHAR[])))
ORDER BY pass_rate, lot_id
LIMIT $limit;
