-- $lot_id NULL = every lot (full recompute).
DELETE FROM marts.lot_quality_scores WHERE CAST($lot_id AS VARCHAR) IS NULL OR lot_id = CAST($lot_id AS VARCHAR);
