"""How much memory and temporary disk an analyst's query may use (`chipq sql`, `chipq alerts`, the report).

DuckDB spills what does not fit in ``memory_limit`` to ``temp_directory``. For a
read-only file that defaults to ``<file>.tmp`` next to the snapshot, without a
size cap: one careless join could fill the disk the warehouse writer needs.
Readers spill under ``$CHIPQ_HOME/tmp`` instead (one folder per process and
snapshot, which DuckDB removes when the connection closes), up to a cap.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chipq_pipelines.paths import ChipqHome

MEMORY_LIMIT_ENV = "CHIPQ_SQL_MEMORY_LIMIT"
TEMP_LIMIT_ENV = "CHIPQ_SQL_TEMP_LIMIT"
#: A quarter of the machine's memory: the pipeline's writer and the broker keep the rest.
DEFAULT_MEMORY_LIMIT = "25%"
DEFAULT_TEMP_LIMIT = "4GB"


@dataclass(frozen=True)
class ReaderLimits:
    """DuckDB's ``memory_limit`` and ``max_temp_directory_size`` (DuckDB size text: ``2GB``, ``512MB``, ``25%``)."""

    memory_limit: str = DEFAULT_MEMORY_LIMIT
    max_temp_directory_size: str = DEFAULT_TEMP_LIMIT
    #: Parent of the spill folders (default ``$CHIPQ_HOME/tmp``).
    temp_root: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ReaderLimits:
        """``CHIPQ_SQL_MEMORY_LIMIT`` and ``CHIPQ_SQL_TEMP_LIMIT`` when set, else the defaults."""
        env = os.environ if environ is None else environ
        return cls(
            memory_limit=env.get(MEMORY_LIMIT_ENV, "").strip() or DEFAULT_MEMORY_LIMIT,
            max_temp_directory_size=env.get(TEMP_LIMIT_ENV, "").strip() or DEFAULT_TEMP_LIMIT,
        )

    def temp_directory(self, snapshot_path: Path) -> Path:
        """This process's spill folder for ``snapshot_path``.

        Per process, because two DuckDB instances must not share temp files; per
        snapshot file, because one process may read two copies at once.
        """
        root = self.temp_root or ChipqHome.from_env().root / "tmp"
        tag = hashlib.sha256(str(snapshot_path.resolve()).encode()).hexdigest()[:10]
        return root / f"duckdb-{os.getpid()}-{tag}"

    def duckdb_config(self, snapshot_path: Path) -> dict[str, Any]:
        """The settings given to ``duckdb.connect`` (locked afterwards: a query cannot raise them)."""
        return {
            "memory_limit": self.memory_limit,
            "max_temp_directory_size": self.max_temp_directory_size,
            "temp_directory": str(self.temp_directory(snapshot_path)),
        }
