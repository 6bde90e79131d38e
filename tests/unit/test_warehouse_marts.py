"""Marts against an independent pandas recomputation; idempotent partition rewrites."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from chipq_pipelines.warehouse import (
    connect,
    ensure_schema,
    land_batch,
    rewrite_all_marts,
    rewrite_days,
    rewrite_defect_rates,
    rewrite_lot_quality,
    rewrite_lots,
)
from chipq_pipelines.warehouse.columns import CANARY_LOT_ID, is_canary
from chipq_pipelines.warehouse.samples import (
    BASE_TIME,
    HOSTILE_LOT_IDS,
    INSPECTION_TOPIC,
    Stream,
    at,
    defect,
    inspection_event,
    land_stream,
    random_stream,
)

DEFECT_RATE_COLUMNS = [
    "event_date",
    "defect_type",
    "chips_inspected",
    "chips_with_defect",
    "defect_count",
    "defect_rate",
]
LOT_COLUMNS = [
    "lot_id",
    "inspections_completed",
    "chips_inspected",
    "mean_quality_score",
    "min_quality_score",
    "pass_rate",
    "unscored_inspections",
    "defect_count",
    "defect_density",
    "critical_defects",
    "first_event_time",
    "last_event_time",
]
MARTS = [
    ("marts.defect_rates", DEFECT_RATE_COLUMNS, "ALL"),
    ("marts.lot_quality_scores", LOT_COLUMNS, "lot_id"),
]


@pytest.fixture
def conn(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    connection = connect(tmp_path / "warehouse.duckdb")
    ensure_schema(connection)
    yield connection
    connection.close()


def landed_completions(stream: Stream) -> pd.DataFrame:
    """Completed, non-canary events as the warehouse should keep them: first delivery of each event_id."""
    rows = []
    seen = set()
    for event, coordinates in sorted(stream.records, key=lambda r: (r[1].partition, r[1].offset)):
        if event["event_id"] in seen:
            continue
        seen.add(event["event_id"])
        if event["event_type"] != "INSPECTION_COMPLETED" or is_canary(event["metadata"], event["batch_id"]):
            continue
        rows.append(
            {
                **{k: event[k] for k in ("event_id", "inspection_id", "batch_id", "chip_id", "quality_score")},
                "event_time": event["event_time"],
                "event_date": event["event_time"].date(),
                "partition": coordinates.partition,
                "offset": coordinates.offset,
                "defects": event["defects"],
            }
        )
    return pd.DataFrame(rows)


def expected_defect_rates(completions: pd.DataFrame) -> pd.DataFrame:
    inspected = completions.groupby("event_date")["chip_id"].nunique().rename("chips_inspected")
    defects = completions.explode("defects").dropna(subset=["defects"])
    defects["defect_type"] = [d["defect_type"] for d in defects["defects"]]
    by_type = defects.groupby(["event_date", "defect_type"]).agg(
        chips_with_defect=("chip_id", "nunique"), defect_count=("event_id", "size")
    )
    expected = by_type.reset_index().merge(inspected.reset_index(), on="event_date")
    expected["defect_rate"] = expected["chips_with_defect"] / expected["chips_inspected"]
    return expected[DEFECT_RATE_COLUMNS].sort_values(["event_date", "defect_type"]).reset_index(drop=True)


def expected_lot_quality(completions: pd.DataFrame, threshold: float) -> pd.DataFrame:
    ordered = completions.sort_values(["event_time", "partition", "offset", "event_id"])
    latest = ordered.groupby(["batch_id", "inspection_id"]).tail(1)
    rows = []
    for lot_id, lot in latest.groupby("batch_id"):
        scores = lot["quality_score"].astype("float64")
        all_defects = [d for defects in lot["defects"] for d in defects]
        chips = lot["chip_id"].nunique()
        rows.append(
            {
                "lot_id": lot_id,
                "inspections_completed": len(lot),
                "chips_inspected": chips,
                "mean_quality_score": scores.mean() if scores.notna().any() else None,
                "min_quality_score": scores.min() if scores.notna().any() else None,
                "pass_rate": float((scores >= threshold).sum()) / len(lot),
                "unscored_inspections": int(scores.isna().sum()),
                "defect_count": len(all_defects),
                "defect_density": len(all_defects) / chips,
                "critical_defects": sum(d["severity"] == "CRITICAL" for d in all_defects),
                "first_event_time": lot["event_time"].min(),
                "last_event_time": lot["event_time"].max(),
            }
        )
    return pd.DataFrame(rows)[LOT_COLUMNS].sort_values("lot_id").reset_index(drop=True)


def mart_table(conn: duckdb.DuckDBPyConnection, table: str, columns: list[str], order: str) -> pd.DataFrame:
    return conn.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}").df()


def assert_frames_match(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert len(actual) == len(expected) > 0
    for column in expected.columns:
        left, right = actual[column].tolist(), expected[column].tolist()
        if column == "event_date":  # DuckDB hands DATE to pandas as Timestamp
            left = [pd.Timestamp(v).date() for v in left]
            right = [pd.Timestamp(v).date() for v in right]
        if column.endswith("_time"):
            left = [pd.Timestamp(v).to_pydatetime() for v in left]
            right = [pd.Timestamp(v).to_pydatetime() for v in right]
        if isinstance(right[0], float) or column.endswith(("_rate", "_score", "_density")):
            assert pd.Series(left, dtype="float64").tolist() == pytest.approx(
                pd.Series(right, dtype="float64").tolist(), nan_ok=True
            ), column
        else:
            assert left == right, column


@pytest.mark.parametrize(("seed", "in_sets"), [(1, False), (2, False), (3, False), (1, True), (4, True)])
def test_marts_match_an_independent_recomputation(conn: duckdb.DuckDBPyConnection, seed: int, in_sets: bool) -> None:
    stream = random_stream(seed, lots=("LOT-A", "LOT-B", *HOSTILE_LOT_IDS[:2]))
    results = land_stream(conn, stream, chunks=4)
    completions = landed_completions(stream)
    assert sum(r.duplicates for r in results) > 0  # the stream really has retries
    assert completions.groupby(["batch_id", "inspection_id"]).size().max() > 1  # and re-completions
    assert set().union(*(r.touched_event_dates for r in results)) == set(completions["event_date"])
    assert set().union(*(r.touched_lot_ids for r in results)) == set(completions["batch_id"])

    # rewrite exactly the partitions landing reported, batch after batch, like the Dagster layer
    # (one partition at a time, or every touched partition of a batch in one set-based statement)
    for result in results:
        if in_sets:
            rewrite_days(conn, result.touched_event_dates)
            rewrite_lots(conn, result.touched_lot_ids, pass_threshold=0.8)
            continue
        for day in sorted(result.touched_event_dates):
            rewrite_defect_rates(conn, day)
        for lot_id in sorted(result.touched_lot_ids):
            rewrite_lot_quality(conn, lot_id, pass_threshold=0.8)
    # ...but a rewrite of an early batch ran before late events for the same day arrived, so rewrite
    # every touched partition once more at the end, as the sensor would on the next tick
    for day in set(completions["event_date"]):
        rewrite_defect_rates(conn, day)
    for lot_id in set(completions["batch_id"]):
        rewrite_lot_quality(conn, lot_id, pass_threshold=0.8)

    expected_rates = expected_defect_rates(completions)
    expected_lots = expected_lot_quality(completions, threshold=0.8)
    assert_frames_match(mart_table(conn, "marts.defect_rates", DEFECT_RATE_COLUMNS, "ALL"), expected_rates)
    assert_frames_match(mart_table(conn, "marts.lot_quality_scores", LOT_COLUMNS, "lot_id"), expected_lots)

    # a full recompute gives the very same marts, bit for bit
    incremental = [mart_table(conn, t, c, o) for t, c, o in MARTS]
    rewrite_all_marts(conn, pass_threshold=0.8)
    assert all(mart_table(conn, t, c, o).equals(before) for (t, c, o), before in zip(MARTS, incremental, strict=True))
    assert_frames_match(mart_table(conn, "marts.defect_rates", DEFECT_RATE_COLUMNS, "ALL"), expected_rates)
    assert_frames_match(mart_table(conn, "marts.lot_quality_scores", LOT_COLUMNS, "lot_id"), expected_lots)


def test_rewrites_are_idempotent_and_touch_only_their_partition(conn: duckdb.DuckDBPyConnection) -> None:
    land_stream(conn, random_stream(7), chunks=2)
    rewrite_all_marts(conn)
    before_rates = mart_table(conn, "marts.defect_rates", DEFECT_RATE_COLUMNS, "ALL")
    before_lots = mart_table(conn, "marts.lot_quality_scores", LOT_COLUMNS, "lot_id")
    day = before_rates["event_date"].iloc[0]
    day = day.date() if hasattr(day, "date") else day
    for _ in range(2):
        rates = rewrite_defect_rates(conn, day)
        lot = rewrite_lot_quality(conn, "LOT-B")
    assert rates.row_count == int((before_rates["event_date"] == before_rates["event_date"].iloc[0]).sum()) > 0
    assert lot.row_count == 1
    assert mart_table(conn, "marts.defect_rates", DEFECT_RATE_COLUMNS, "ALL").equals(before_rates)
    assert mart_table(conn, "marts.lot_quality_scores", LOT_COLUMNS, "lot_id").equals(before_lots)
    assert "LOT-B" in lot.preview_markdown
    assert rates.partition == day.isoformat()


def test_lot_quality_threshold_null_scores_and_latest_completion(conn: duckdb.DuckDBPyConnection) -> None:
    t0 = BASE_TIME
    events = [
        # inspection 1: completed twice; the later completion (0.95, no defects) replaces the earlier one
        inspection_event(inspection_id="i1", chip_id="c1", event_time=t0, quality_score=0.4),
        inspection_event(
            inspection_id="i1", chip_id="c1", event_time=t0 + dt.timedelta(hours=1), quality_score=0.95, defects=[]
        ),
        # inspection 2: unscored completion with two defects, one critical
        inspection_event(
            inspection_id="i2", chip_id="c2", event_time=t0, quality_score=None,
            defects=[defect("scratch", "CRITICAL"), defect("loc", "LOW")],
        ),
        # inspection 3: two completions at the same time: the later Kafka offset wins
        inspection_event(
            inspection_id="i3", chip_id="c2", event_time=t0, quality_score=0.1, defects=[defect("donut", "CRITICAL")]
        ),
        inspection_event(inspection_id="i3", chip_id="c2", event_time=t0, quality_score=0.86, defects=[]),
        # not counted: a creation and a canary completion
        inspection_event(inspection_id="i4", chip_id="c4", event_type="INSPECTION_CREATED", quality_score=None),
        inspection_event(
            inspection_id="i5", chip_id="c5", quality_score=0.0, batch_id=CANARY_LOT_ID,
            metadata={"chipq_canary": "true"},
        ),
    ]  # fmt: skip
    land_batch(
        conn,
        topic=INSPECTION_TOPIC,
        offset_ranges={0: (0, len(events))},
        inspection_events=[(event, at(0, i)) for i, event in enumerate(events)],
    )
    rewrite_lot_quality(conn, "LOT-A")
    row = conn.execute(f"SELECT {', '.join(LOT_COLUMNS)}, pass_threshold FROM marts.lot_quality_scores").fetchall()
    assert row == [
        (
            "LOT-A",
            3,
            2,
            pytest.approx(0.905),
            0.86,
            pytest.approx(2 / 3),
            1,
            2,
            1.0,
            1,
            t0,
            t0 + dt.timedelta(hours=1),
            0.85,
        )
    ]
    rewrite_lot_quality(conn, "LOT-A", pass_threshold=0.9)
    assert conn.execute("SELECT pass_rate, pass_threshold FROM marts.lot_quality_scores").fetchone() == (
        pytest.approx(1 / 3),
        0.9,
    )
    with pytest.raises(ValueError, match="outside"):
        rewrite_lot_quality(conn, "LOT-A", pass_threshold=1.5)
    # a lot with only canary or no completions has no row
    assert rewrite_lot_quality(conn, "LOT-NOBODY").row_count == 0


def test_defect_rates_of_a_day_and_late_events_reopen_it(conn: duckdb.DuckDBPyConnection) -> None:
    day = BASE_TIME.date()
    first = [
        inspection_event(chip_id="c1", defects=[defect("scratch"), defect("scratch"), defect("donut")]),
        inspection_event(chip_id="c1", defects=[defect("scratch")]),  # the same chip re-inspected
        inspection_event(chip_id="c2", defects=[]),
        inspection_event(chip_id="c3", defects=[defect("scratch")], event_time=BASE_TIME + dt.timedelta(days=1)),
        inspection_event(
            chip_id="c9", defects=[defect("scratch")], batch_id=CANARY_LOT_ID, metadata={"chipq_canary": "true"}
        ),
    ]
    land_batch(
        conn,
        topic=INSPECTION_TOPIC,
        offset_ranges={0: (0, 5)},
        inspection_events=[(e, at(0, i)) for i, e in enumerate(first)],
    )
    result = rewrite_defect_rates(conn, day)
    rows = conn.execute(
        "SELECT defect_type, chips_inspected, chips_with_defect, defect_count, defect_rate "
        "FROM marts.defect_rates WHERE event_date = ? ORDER BY defect_type",
        [day],
    ).fetchall()
    assert rows == [("donut", 2, 1, 1, 0.5), ("scratch", 2, 1, 3, 0.5)]
    assert result.row_count == 2
    late = inspection_event(chip_id="c4", defects=[defect("scratch")], event_time=BASE_TIME + dt.timedelta(hours=5))
    landed = land_batch(conn, topic=INSPECTION_TOPIC, offset_ranges={0: (5, 6)}, inspection_events=[(late, at(0, 5))])
    assert landed.touched_event_dates == {day}
    rewrite_defect_rates(conn, day)
    rows = conn.execute(
        "SELECT defect_type, chips_inspected, chips_with_defect, defect_count FROM marts.defect_rates "
        "WHERE event_date = ? ORDER BY defect_type",
        [day],
    ).fetchall()
    assert rows == [("donut", 3, 1, 1), ("scratch", 3, 2, 4)]
    # the next day was never rewritten: partitions are independent
    assert conn.execute("SELECT count(*) FROM marts.defect_rates WHERE event_date <> ?", [day]).fetchone() == (0,)
