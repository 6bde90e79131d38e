"""Where chipq keeps its local state.

Everything lives under ``CHIPQ_HOME`` (default ``./.chipq``): the Kafka jar
cache and broker data, the DuckDB warehouse, the analyst snapshot and
``DAGSTER_HOME``. Deleting that folder resets a machine to new.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ChipqHome:
    """The folders under one ``CHIPQ_HOME``."""

    root: Path

    @classmethod
    def from_env(cls) -> ChipqHome:
        return cls(Path(os.environ.get("CHIPQ_HOME", ".chipq")).resolve())

    @property
    def kafka_lib(self) -> Path:
        """Jar cache filled from Maven Central (shared by every broker)."""
        return self.root / "kafka" / "lib"

    def kafka_instance(self, port: int) -> Path:
        """Data, config, pid and log of the broker listening on ``port``."""
        return self.root / "kafka" / f"broker-{port}"

    @property
    def registry(self) -> Path:
        """The local schema registry: its build (``app``) and one folder per port."""
        return self.root / "registry"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def analyst_snapshot(self) -> Path:
        return self.root / "analytics.duckdb"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster"
