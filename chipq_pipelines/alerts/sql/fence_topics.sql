-- Which of the topics in $topics have a fence, and the newest outbox change_seq the quality topic's covers.
SELECT topic, max(covers_change_seq) AS covers_change_seq
FROM ops.alert_fence
WHERE topic IN (SELECT unnest(CAST($topics AS VARCHAR[])))
GROUP BY topic;
