-- The newest change_seq of unpublished outbox rows that a publish run already sent (a crash between send
-- and mark): their events may be on the quality topic beyond what is landed.
SELECT max(change_seq) FROM ops.alert_outbox WHERE published_at IS NULL AND publish_attempts > 0;
