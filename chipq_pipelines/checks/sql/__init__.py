"""The checks domain's SQL, one file per query, named for what it serves."""

from chipq_pipelines.warehouse.schema import load_sql


def load(name: str) -> str:
    """Text of ``<name>.sql`` in this folder."""
    return load_sql(name, package=__name__)
