"""An isolated pipeline environment per test on the session's real broker.

Each test gets its own topics (3 partitions), pipeline consumer group,
CHIPQ_HOME (warehouse, snapshot) and DAGSTER_HOME, so tests never see each
other's events or state (``PipelineEnv`` in ``tests/conftest.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture
def pipeline_env(kafka_bootstrap: str, make_pipeline_env: Callable[..., Any]) -> Any:
    return make_pipeline_env(kafka_bootstrap)
