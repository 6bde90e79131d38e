"""The pipeline metrics' SQL, one file per query, run against the analysts' view (read-only)."""

from chipq_pipelines.warehouse.schema import load_sql


def load(name: str) -> str:
    """Text of ``<name>.sql`` in this folder."""
    return load_sql(name, package=__name__)
