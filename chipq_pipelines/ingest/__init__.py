"""Ingest work that is not Dagster: decoding Kafka records into batches ready to land."""
