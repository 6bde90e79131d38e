-- Defects per type over every completed, non-canary inspection (the marts' population), most frequent first.
SELECT defect_type, sum(defect_count)::BIGINT AS defect_count
FROM marts.defect_rates
GROUP BY defect_type
HAVING sum(defect_count) > 0
ORDER BY defect_count DESC, defect_type;
