"""The example queries of docs/analysts.md run against a snapshot built from sample data."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from chipq_pipelines.paths import REPO_ROOT
from chipq_pipelines.warehouse import (
    OffsetGap,
    RejectedRecord,
    connect,
    ensure_schema,
    format_result,
    land_batch,
    publish_snapshot,
    query_snapshot,
    rewrite_all_marts,
)
from chipq_pipelines.warehouse.landing import land_prepared
from chipq_pipelines.warehouse.prepare import prepare_batch
from chipq_pipelines.warehouse.samples import QUALITY_TOPIC, at, land_stream, quality_event, random_stream

ANALYSTS_DOC = REPO_ROOT / "docs" / "analysts.md"
SQL_BLOCKS = re.findall(r"```sql\n(.*?)```", ANALYSTS_DOC.read_text(encoding="utf-8"), flags=re.DOTALL)


@pytest.fixture(scope="module")
def sample_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("docs")
    with connect(root / "warehouse.duckdb") as conn:
        ensure_schema(conn)
        land_stream(conn, random_stream(11, lots=("LOT-A", "LOT-B", "LOT-O'Brien")))
        land_batch(
            conn,
            topic=QUALITY_TOPIC,
            offset_ranges={0: (0, 2)},
            quality_events=[(quality_event(), at(0, 0, QUALITY_TOPIC))],
            rejected=[RejectedRecord(QUALITY_TOPIC, 0, 1, None, b"\x00garbage", "SerializationError: bad magic")],
        )
        # offsets 2..4 deleted by retention before they landed
        land_prepared(
            conn, topic=QUALITY_TOPIC, offset_ranges={0: (2, 5)}, batch=prepare_batch(), gaps=[OffsetGap(0, 2, 4)]
        )
        rewrite_all_marts(conn)
        publish_snapshot(conn, root / "analytics.duckdb")
    return root / "analytics.duckdb"


def test_the_doc_has_examples() -> None:
    assert len(SQL_BLOCKS) >= 8


@pytest.mark.parametrize("sql", SQL_BLOCKS, ids=[f"block{i}" for i in range(len(SQL_BLOCKS))])
def test_example_query_runs_and_returns_rows(sample_snapshot: Path, sql: str) -> None:
    result = query_snapshot(sample_snapshot, sql)
    assert len(result) > 0, sql
    for fmt in ("table", "csv", "json"):
        assert format_result(result, fmt)
