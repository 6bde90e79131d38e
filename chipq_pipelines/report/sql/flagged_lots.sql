-- Lots with at least one LOT-scope violation in the outbox: CRITICAL lots first, then by lot id.
WITH flagged AS (
    SELECT lot_id,
           CASE WHEN bool_or(alert_level = 'CRITICAL') THEN 'CRITICAL' ELSE 'WARNING' END AS alert_level,
           string_agg(DISTINCT rule, ', ' ORDER BY rule) AS rules,
           count(*) AS violations
    FROM ops.alert_outbox
    WHERE scope = 'LOT' AND lot_id IS NOT NULL
    GROUP BY lot_id
)
SELECT lot_id, alert_level, rules, violations
FROM flagged
ORDER BY alert_level = 'CRITICAL' DESC, lot_id;
