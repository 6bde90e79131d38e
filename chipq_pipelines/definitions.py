"""chipq's Definitions: everything in ``chipq_pipelines/defs/``, found by Dagster's folder loader.

``workspace.yaml`` (and ``dg``, through ``[tool.dg]`` in pyproject.toml) point here.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

DEFS_FOLDER = Path(__file__).with_name("defs")


def build_defs() -> dg.Definitions:
    """The Definitions with resources bound to the current environment (tests call it after setting env)."""
    return dg.load_from_defs_folder(path_within_project=DEFS_FOLDER)


@dg.definitions
def defs() -> dg.Definitions:
    return build_defs()
