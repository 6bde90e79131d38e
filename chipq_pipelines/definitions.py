"""The single Definitions object of chipq (workspace.yaml points here)."""

from __future__ import annotations

import dagster as dg

defs = dg.Definitions(assets=[])
