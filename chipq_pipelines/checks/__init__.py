"""Check queries that are not Dagster: data quality and freshness of the marts, and the end-to-end flow probes."""
