"""Read-only queries the quality report runs on the analyst snapshot (no parameters, no user data)."""
