-- Poison records per topic (ops.rejected_events stays small: one row per bad record).
SELECT topic, count(*) AS records
FROM ops.rejected_events
GROUP BY topic;
