-- The lots being rewritten (in $lots).
DELETE FROM marts.lot_quality_scores WHERE lot_id IN (SELECT unnest(CAST($lots AS VARCHAR[])));
