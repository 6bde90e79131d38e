"""How chipq's runs execute: resources bound to the environment, and steps in one process."""

import dagster as dg

from chipq_pipelines.defs.resources import default_resources


@dg.definitions
def runtime() -> dg.Definitions:
    """Resources from the environment variables that are set (read when the code loads).

    Steps of a run share one process: they take turns on the single DuckDB writer anyway,
    and a process per step (Dagster's default) costs about 2 s of start-up each.
    """
    return dg.Definitions(resources=default_resources(), executor=dg.in_process_executor)
