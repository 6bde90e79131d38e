-- Recent violations for `chipq alerts` (newest first), optionally one level or rule; state says whether
-- the violation's episode was cleared since (THRESHOLD_CLEARED) or is still open.
SELECT detected_at, alert_level, rule, scope, subject, observed_value, threshold, state, cleared_at, published,
       message
FROM ops.alerts
WHERE (CAST($level AS VARCHAR) IS NULL OR alert_level = CAST($level AS VARCHAR))
  AND (CAST($rule AS VARCHAR) IS NULL OR rule = CAST($rule AS VARCHAR))
ORDER BY detected_at DESC, rule, subject
LIMIT $limit;
