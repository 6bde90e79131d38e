SELECT count(*) FROM marts.lot_quality_scores WHERE lot_id IN (SELECT unnest(CAST($lots AS VARCHAR[])));
