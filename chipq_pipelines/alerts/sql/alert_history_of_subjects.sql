-- The alert history (violations and clearances, every episode) of the subjects registered as the relation
-- judged_subjects (rule, scope, lot_id, event_date, defect_type): alerts.lifecycle takes the latest episode.
SELECT o.rule, o.scope, o.lot_id, o.event_date, o.defect_type, o.episode, o.event_type, o.alert_level, o.threshold
FROM ops.alert_outbox AS o
SEMI JOIN judged_subjects AS j
    ON o.rule = j.rule AND o.scope = j.scope
   AND o.lot_id IS NOT DISTINCT FROM j.lot_id
   AND o.event_date IS NOT DISTINCT FROM j.event_date
   AND o.defect_type IS NOT DISTINCT FROM j.defect_type;
