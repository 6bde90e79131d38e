SELECT watermark, rules_version FROM ops.alert_state WHERE name = $name;
