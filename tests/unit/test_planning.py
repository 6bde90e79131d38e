"""Offset planning, partition-range grouping and lot partition keys (no broker needed)."""

from __future__ import annotations

import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from chipq_pipelines.defs.ingest.planner import cap_ranges
from chipq_pipelines.defs.marts.sensors import _range_requests
from chipq_pipelines.defs.partitions import lot_id_from_partition_key, lot_partition_key


def test_cap_ranges_keeps_small_backlogs_whole_and_shares_the_budget() -> None:
    assert cap_ranges({0: (0, 10), 1: (5, 8)}, 100) == {0: (0, 10), 1: (5, 8)}
    capped = cap_ranges({0: (0, 1000), 1: (0, 10), 2: (100, 1100)}, 300)
    assert capped[1] == (0, 10), "a short partition takes only what it has"
    assert capped[0] == (0, 145) and capped[2] == (100, 245), "the rest is shared fairly"
    assert sum(end - start for start, end in capped.values()) == 300
    assert cap_ranges({}, 10) == {}


def test_range_requests_group_contiguous_touched_partitions() -> None:
    order = ["a", "b", "c", "d", "e", "f"]
    requests = _range_requests("job", order, {"b", "c", "d", "f"}, tag=7)
    assert len(requests) == 2
    block, single = requests
    assert block.tags[ASSET_PARTITION_RANGE_START_TAG] == "b"
    assert block.tags[ASSET_PARTITION_RANGE_END_TAG] == "d"
    assert block.partition_key is None
    assert single.partition_key == "f"
    assert block.run_key != single.run_key
    assert _range_requests("job", order, set(), tag=None) == []


def test_range_requests_merge_blocks_separated_by_small_gaps() -> None:
    order = [f"k{i:02d}" for i in range(30)]
    touched = {"k01", "k02", "k05", "k20"}
    merged, far = _range_requests("job", order, touched, tag=1, merge_gap=3)
    assert (merged.tags[ASSET_PARTITION_RANGE_START_TAG], merged.tags[ASSET_PARTITION_RANGE_END_TAG]) == ("k01", "k05")
    assert far.partition_key == "k20"
    assert len(_range_requests("job", order, touched, tag=1)) == 3  # no merging by default


@pytest.mark.parametrize(
    "lot_id",
    ["LOT-1", "LOT/slash/ü", "LOT-'quoted'", "LOT...dots", "tab\tlot", " padded ", "a,b", "lot~b64~x", "", "x" * 300],
)
def test_every_lot_id_has_a_partition_key_that_maps_back(lot_id: str) -> None:
    key = lot_partition_key(lot_id)
    assert lot_id_from_partition_key(key) == lot_id
    assert "..." not in key and "\t" not in key and "," not in key
