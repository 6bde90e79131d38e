-- The lots of marts.lot_quality_scores rewritten after $since (every lot when $since is NULL), flagged
-- changed, plus the $lookback scored lots (with a mean_quality_score) before and after each changed
-- scored lot in SPC time order (first_event_time, then lot_id): SPC judges a changed lot with its
-- predecessors and re-judges the successors whose Western Electric windows hold it.
-- Only lots from the $lookback-th scored lot before the earliest changed one on are ranked (their
-- order among themselves is their order in history); the rows returned are the changed lots and
-- their neighbours, in SPC time order.
WITH changed AS (
    SELECT lot_id, first_event_time FROM marts.lot_quality_scores
    WHERE CAST($since AS TIMESTAMPTZ) IS NULL OR updated_at > CAST($since AS TIMESTAMPTZ)
),
earliest AS (
    SELECT first_event_time, lot_id FROM changed ORDER BY first_event_time, lot_id LIMIT 1
),
predecessors AS (
    SELECT m.first_event_time
    FROM marts.lot_quality_scores AS m, earliest AS e
    WHERE m.mean_quality_score IS NOT NULL
      AND m.first_event_time <= e.first_event_time
      AND (m.first_event_time < e.first_event_time OR m.lot_id < e.lot_id)
    ORDER BY m.first_event_time DESC, m.lot_id DESC
    LIMIT CAST($lookback AS BIGINT)
),
scored AS (
    SELECT lot_id, row_number() OVER (ORDER BY first_event_time, lot_id) AS position
    FROM marts.lot_quality_scores
    WHERE mean_quality_score IS NOT NULL
      AND first_event_time >= (
          SELECT coalesce(min(p.first_event_time), any_value(e.first_event_time))
          FROM earliest AS e LEFT JOIN predecessors AS p ON true
      )
),
changed_positions AS (
    SELECT position FROM scored SEMI JOIN changed USING (lot_id)
),
neighbours AS (
    SELECT s.lot_id
    FROM scored AS s
    JOIN changed_positions AS c
      ON s.position BETWEEN c.position - CAST($lookback AS BIGINT) AND c.position + CAST($lookback AS BIGINT)
)
SELECT
    m.lot_id, m.inspections_completed, m.chips_inspected, m.mean_quality_score, m.min_quality_score,
    m.pass_rate, m.defect_count, m.defect_density, m.critical_defects, m.first_event_time, m.updated_at,
    m.lot_id IN (SELECT lot_id FROM changed) AS changed
FROM marts.lot_quality_scores AS m
WHERE m.lot_id IN (SELECT lot_id FROM changed UNION SELECT lot_id FROM neighbours)
ORDER BY m.first_event_time, m.lot_id;
