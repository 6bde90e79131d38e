INSERT INTO ops.alert_state (name, watermark, rules_version, updated_at)
VALUES ($name, $watermark, $rules_version, now())
ON CONFLICT (name) DO UPDATE SET
    watermark = excluded.watermark, rules_version = excluded.rules_version, updated_at = excluded.updated_at;
