"""Offset planning, partition-range grouping and lot partition keys (no broker needed)."""

from __future__ import annotations

import pytest

from chipq_pipelines.defs.partitions import lot_id_from_partition_key, lot_partition_key
from chipq_pipelines.ingest.planner import cap_ranges


def test_cap_ranges_keeps_small_backlogs_whole_and_shares_the_budget() -> None:
    assert cap_ranges({0: (0, 10), 1: (5, 8)}, 100) == {0: (0, 10), 1: (5, 8)}
    capped = cap_ranges({0: (0, 1000), 1: (0, 10), 2: (100, 1100)}, 300)
    assert capped[1] == (0, 10), "a short partition takes only what it has"
    assert capped[0] == (0, 145) and capped[2] == (100, 245), "the rest is shared fairly"
    assert sum(end - start for start, end in capped.values()) == 300
    assert cap_ranges({}, 10) == {}


@pytest.mark.parametrize(
    "lot_id",
    ["LOT-1", "LOT/slash/ü", "LOT-'quoted'", "LOT...dots", "tab\tlot", " padded ", "a,b", "lot~b64~x", "", "x" * 300],
)
def test_every_lot_id_has_a_partition_key_that_maps_back(lot_id: str) -> None:
    key = lot_partition_key(lot_id)
    assert lot_id_from_partition_key(key) == lot_id
    assert "..." not in key and "\t" not in key and "," not in key
