"""Ingest work that is not Dagster: planning exact offset ranges, reading and decoding them, landing them in order."""
