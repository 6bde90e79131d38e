"""Alerts work that is not Dagster: the outbox (rules evaluated into it, published from it) and listing alerts."""
