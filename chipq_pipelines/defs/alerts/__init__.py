"""Alerts domain: rules evaluated on the marts, violations published as THRESHOLD_VIOLATED."""
