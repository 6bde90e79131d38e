"""Checks domain: asset checks that prove the flow (canary, reconciliation, data quality, freshness)."""
