"""Landing: effectively once (dedupe, offset continuity, replay), rejects, validation, hostile lot ids."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import duckdb
import pytest

from chipq_pipelines.warehouse import (
    RejectedRecord,
    StaleOffsetRangeError,
    ValidationBounds,
    connect,
    ensure_schema,
    land_batch,
    landed_offsets,
    rewrite_lot_quality,
)
from chipq_pipelines.warehouse.samples import (
    BASE_TIME,
    HOSTILE_LOT_IDS,
    INSPECTION_TOPIC,
    QUALITY_TOPIC,
    at,
    defect,
    inspection_event,
    quality_event,
)

INGESTED_AT = dt.datetime(2025, 3, 12, tzinfo=dt.UTC)


@pytest.fixture
def conn(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    connection = connect(tmp_path / "warehouse.duckdb")
    ensure_schema(connection)
    yield connection
    connection.close()


def count(conn: duckdb.DuckDBPyConnection, table: str) -> int:
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_schema_is_idempotent_and_every_analyst_column_is_commented(conn: duckdb.DuckDBPyConnection) -> None:
    ensure_schema(conn)
    tables = conn.execute(
        "SELECT schema_name || '.' || table_name FROM duckdb_tables() WHERE comment IS NULL OR comment = ''"
    ).fetchall()
    columns = conn.execute(
        "SELECT schema_name || '.' || table_name || '.' || column_name FROM duckdb_columns() "
        "WHERE schema_name IN ('raw', 'ops', 'marts') AND table_name <> 'daily_inspections' "
        "AND (comment IS NULL OR comment = '')"
    ).fetchall()
    assert tables == []
    assert columns == []
    names = conn.execute(
        "SELECT schema_name || '.' || table_name FROM duckdb_tables() WHERE schema_name IN ('raw', 'ops', 'marts')"
    ).fetchall()
    assert sorted(name for (name,) in names) == [
        "marts.defect_rates",
        "marts.lot_quality_scores",
        "ops.alert_fence",
        "ops.alert_outbox",
        "ops.alert_state",
        "ops.canaries",
        "ops.ingested_offsets",
        "ops.lot_days",
        "ops.mart_changes",
        "ops.offset_gaps",
        "ops.pending_mart_partitions",
        "ops.rejected_events",
        "ops.spc_baseline",
        "ops.warehouse_info",
        "raw.defects",
        "raw.inspection_events",
        "raw.quality_events",
    ]


def test_lands_every_field_defects_and_offsets(conn: duckdb.DuckDBPyConnection) -> None:
    late_evening = dt.datetime(2025, 3, 10, 23, 59, 59, 123000, tzinfo=dt.UTC)
    event = inspection_event(
        event_time=late_evening,
        batch_id="LOT-7",
        wafer_id=None,
        station_id="ST-3",
        recipe_id="R-9",
        defects=[defect("scratch", "HIGH", 0.5), defect("donut", "CRITICAL", 1.0)],
        metadata={"line": "fab-1", "chipq_canary": "false"},
    )
    result = land_batch(
        conn,
        topic=INSPECTION_TOPIC,
        offset_ranges={0: (0, 3)},
        inspection_events=[(event, at(0, 1))],
        ingested_at=INGESTED_AT,
    )
    assert (result.inserted_inspection_events, result.inserted_defects, result.duplicates) == (1, 2, 0)
    assert result.offsets == {0: 3}
    assert result.touched_event_dates == {dt.date(2025, 3, 10)}
    assert result.touched_lot_ids == {"LOT-7"}
    row = conn.execute(
        "SELECT event_id, event_time, event_date, batch_id, wafer_id, station_id, recipe_id, quality_score, "
        "defect_count, metadata['line'], is_canary, kafka_topic, kafka_partition, kafka_offset, ingested_at "
        "FROM raw.inspection_events"
    ).fetchone()
    assert row == (
        event["event_id"],
        late_evening,
        dt.date(2025, 3, 10),
        "LOT-7",
        None,
        "ST-3",
        "R-9",
        0.9,
        2,
        "fab-1",
        False,
        INSPECTION_TOPIC,
        0,
        1,
        INGESTED_AT,
    )
    defects = conn.execute(
        "SELECT defect_index, defect_type, severity, confidence, x, y FROM raw.defects ORDER BY defect_index"
    ).fetchall()
    assert defects == [(0, "scratch", "HIGH", 0.5, 1.5, -2.0), (1, "donut", "CRITICAL", 1.0, 1.5, -2.0)]
    assert landed_offsets(conn, INSPECTION_TOPIC) == {0: 3}
    assert landed_offsets(conn, "other-topic") == {}


def test_duplicate_event_ids_are_skipped_and_counted(conn: duckdb.DuckDBPyConnection) -> None:
    first = inspection_event()
    retry = dict(first)
    other = inspection_event()
    result = land_batch(
        conn,
        topic=INSPECTION_TOPIC,
        offset_ranges={0: (0, 3)},
        inspection_events=[(first, at(0, 0)), (retry, at(0, 1)), (other, at(0, 2))],
    )
    assert (result.inserted_inspection_events, result.duplicates) == (2, 1)
    # the first delivery wins
    assert conn.execute(
        "SELECT kafka_offset FROM raw.inspection_events WHERE event_id = ?", [first["event_id"]]
    ).fetchall() == [(0,)]
    replay_of_both = land_batch(
        conn,
        topic=INSPECTION_TOPIC,
        offset_ranges={0: (3, 5), 1: (0, 1)},
        inspection_events=[(dict(first), at(0, 3)), (dict(other), at(0, 4)), (inspection_event(), at(1, 0))],
    )
    assert (replay_of_both.inserted_inspection_events, replay_of_both.duplicates) == (1, 2)
    assert count(conn, "raw.inspection_events") == 3
    assert count(conn, "raw.defects") == 3
    assert landed_offsets(conn, INSPECTION_TOPIC) == {0: 5, 1: 1}


@pytest.mark.parametrize("stale_range", [(3, 6), (5, 7), (1, 6)], ids=["gap", "ahead", "overlap"])
def test_range_not_starting_at_landed_offset_is_refused_and_nothing_is_written(
    conn: duckdb.DuckDBPyConnection, stale_range: tuple[int, int]
) -> None:
    land_batch(
        conn, topic=INSPECTION_TOPIC, offset_ranges={0: (0, 2)}, inspection_events=[(inspection_event(), at(0, 0))]
    )
    start, end = stale_range
    good_partition_event = inspection_event()
    with pytest.raises(StaleOffsetRangeError, match=r"\[0\].*landed next offset 2"):
        land_batch(
            conn,
            topic=INSPECTION_TOPIC,
            offset_ranges={1: (0, 1), 0: stale_range},
            inspection_events=[(good_partition_event, at(1, 0)), (inspection_event(), at(0, start))],
            rejected=[RejectedRecord(INSPECTION_TOPIC, 0, end - 1, None, b"\x00", "bad")],
        )
    assert count(conn, "raw.inspection_events") == 1
    assert count(conn, "ops.rejected_events") == 0
    assert landed_offsets(conn, INSPECTION_TOPIC) == {0: 2}
    # the connection is usable afterwards (the transaction was rolled back)
    result = land_batch(
        conn, topic=INSPECTION_TOPIC, offset_ranges={0: (2, 3)}, inspection_events=[(inspection_event(), at(0, 2))]
    )
    assert result.inserted_inspection_events == 1


def test_gaps_land_with_the_offsets_that_skip_them_once(conn: duckdb.DuckDBPyConnection) -> None:
    from chipq_pipelines.warehouse import OffsetGap
    from chipq_pipelines.warehouse.landing import land_prepared
    from chipq_pipelines.warehouse.prepare import prepare_batch

    batch = prepare_batch([(inspection_event(), at(0, 9))])
    gap = OffsetGap(partition=0, first_offset=3, last_offset=8)
    result = land_prepared(conn, topic=INSPECTION_TOPIC, offset_ranges={0: (3, 10)}, batch=batch, gaps=[gap])
    assert (result.inserted, result.gaps, result.offsets) == (1, (gap,), {0: 10})
    rows = conn.execute(
        "SELECT topic, partition, first_offset, last_offset, acknowledged_at FROM ops.offset_gaps"
    ).fetchall()
    assert rows == [(INSPECTION_TOPIC, 0, 3, 8, None)]
    # a replay of the same range lands nothing and records the gap no second time
    again = land_prepared(conn, topic=INSPECTION_TOPIC, offset_ranges={0: (3, 10)}, batch=batch, gaps=[gap])
    assert (again.inserted, again.gaps) == (0, ())
    assert count(conn, "ops.offset_gaps") == 1
    with pytest.raises(ValueError, match="outside the landed ranges"):
        land_prepared(
            conn, topic=INSPECTION_TOPIC, offset_ranges={0: (10, 12)}, batch=prepare_batch([]),
            gaps=[OffsetGap(0, 5, 11)],
        )  # fmt: skip
    assert landed_offsets(conn, INSPECTION_TOPIC) == {0: 10}


def test_replay_of_a_fully_landed_range_is_a_no_op(conn: duckdb.DuckDBPyConnection) -> None:
    batch = [(inspection_event(), at(0, 0)), (inspection_event(), at(0, 1))]
    rejects = [RejectedRecord(INSPECTION_TOPIC, 0, 2, b"key", b"\xc3\x01garbage", "undecodable")]
    land_batch(conn, topic=INSPECTION_TOPIC, offset_ranges={0: (0, 3)}, inspection_events=batch, rejected=rejects)
    updated_at = conn.execute("SELECT updated_at FROM ops.ingested_offsets").fetchone()[0]
    for replay_range in [(0, 3), (1, 3), (0, 2)]:
        replay = land_batch(
            conn,
            topic=INSPECTION_TOPIC,
            offset_ranges={0: replay_range},
            inspection_events=[item for item in batch if replay_range[0] <= item[1].offset < replay_range[1]],
        )
        assert replay.inserted == 0
        assert replay.duplicates == 0
        assert replay.replayed_partitions == {0}
        assert replay.touched_lot_ids == frozenset()
    assert count(conn, "raw.inspection_events") == 2
    assert count(conn, "ops.rejected_events") == 1
    assert conn.execute("SELECT next_offset, updated_at FROM ops.ingested_offsets").fetchone() == (3, updated_at)


def test_records_outside_the_ranges_are_a_caller_error(conn: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(ValueError, match="outside the range"):
        land_batch(
            conn, topic=INSPECTION_TOPIC, offset_ranges={0: (0, 1)}, inspection_events=[(inspection_event(), at(0, 1))]
        )
    with pytest.raises(ValueError, match="partition not in offset_ranges"):
        land_batch(
            conn, topic=INSPECTION_TOPIC, offset_ranges={0: (0, 1)}, inspection_events=[(inspection_event(), at(2, 0))]
        )
    with pytest.raises(ValueError, match="invalid offset range"):
        land_batch(conn, topic=INSPECTION_TOPIC, offset_ranges={0: (5, 4)})
    assert landed_offsets(conn, INSPECTION_TOPIC) == {}


def test_rejected_records_keep_raw_bytes_key_and_reason(conn: duckdb.DuckDBPyConnection) -> None:
    poison = bytes(range(256))  # not UTF-8, not Avro
    result = land_batch(
        conn,
        topic=INSPECTION_TOPIC,
        offset_ranges={2: (10, 12)},
        inspection_events=[(inspection_event(), at(2, 11))],
        rejected=[
            RejectedRecord(INSPECTION_TOPIC, 2, 10, b"\xffkey", poison, "SerializationError: unknown magic byte")
        ],
    )
    assert (result.rejected, result.inserted) == (1, 1)
    stored = conn.execute('SELECT topic, partition, "offset", key, raw, reason FROM ops.rejected_events').fetchall()
    assert stored == [(INSPECTION_TOPIC, 2, 10, b"\xffkey", poison, "SerializationError: unknown magic byte")]
    assert landed_offsets(conn, INSPECTION_TOPIC) == {2: 12}


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"quality_score": math.nan}, "quality_score is NaN"),
        ({"quality_score": 1.5}, "quality_score 1.5 is outside [0, 1]"),
        ({"quality_score": -0.01}, "outside [0, 1]"),
        ({"defects": [defect(confidence=math.nan)]}, "defects[0]: confidence is NaN"),
        ({"defects": [defect(), defect(confidence=2.0)]}, "defects[1]: confidence 2.0 is outside"),
        ({"event_time": dt.datetime(1970, 1, 1, tzinfo=dt.UTC)}, "is before 2000-01-01"),
        ({"event_time": dt.datetime(2200, 1, 1, tzinfo=dt.UTC)}, "after ingest"),
        ({"event_time": INGESTED_AT + dt.timedelta(days=1, seconds=1)}, "after ingest"),
        ({"event_time": dt.datetime(2025, 3, 1)}, "no time zone"),
        ({"event_type": "INSPECTION_EXPLODED"}, "not an inspection event type"),
        ({"batch_id": ""}, "batch_id is blank"),
        ({"batch_id": " \t\u00a0"}, "batch_id is whitespace only"),
        ({"chip_id": "   "}, "chip_id is whitespace only"),
        ({"inspection_id": ""}, "inspection_id is blank"),
        ({"batch_id": "LOT-\x1b[31mRED"}, "batch_id holds a control character"),
        ({"chip_id": "C\n1"}, "chip_id holds a control character"),
        ({"station_id": "ST\x00"}, "station_id holds a control character"),
        ({"inspection_id": "I\x85"}, "inspection_id holds a control character"),
    ],
)
def test_invalid_inspection_events_are_rejected_with_their_bytes(
    conn: duckdb.DuckDBPyConnection, overrides: dict[str, object], reason: str
) -> None:
    bad = inspection_event(**overrides)
    good = inspection_event(event_time=INGESTED_AT + dt.timedelta(hours=23))  # within the future bound
    result = land_batch(
        conn,
        topic=INSPECTION_TOPIC,
        offset_ranges={0: (0, 2)},
        inspection_events=[(bad, at(0, 0, value=b"\xc3\x01avro-bytes")), (good, at(0, 1))],
        ingested_at=INGESTED_AT,
    )
    assert (result.inserted, result.rejected) == (1, 1)
    assert conn.execute("SELECT event_id FROM raw.inspection_events").fetchall() == [(good["event_id"],)]
    raw, stored_reason = conn.execute("SELECT raw, reason FROM ops.rejected_events").fetchone()
    assert raw == b"\xc3\x01avro-bytes"
    assert stored_reason.startswith("validation: ")
    assert reason in stored_reason
    assert count(conn, "raw.defects") == len(good["defects"])


def test_validation_bounds_are_parameters_and_json_kept_without_bytes(conn: duckdb.DuckDBPyConnection) -> None:
    bounds = ValidationBounds(
        earliest_event_time=dt.datetime(2025, 3, 10, 12, tzinfo=dt.UTC), max_future=dt.timedelta(0)
    )
    too_early = inspection_event(event_time=dt.datetime(2025, 3, 10, 11, tzinfo=dt.UTC))
    too_late = inspection_event(event_time=INGESTED_AT + dt.timedelta(minutes=1))
    result = land_batch(
        conn,
        topic=INSPECTION_TOPIC,
        offset_ranges={0: (0, 2)},
        inspection_events=[(too_early, at(0, 0)), (too_late, at(0, 1))],
        bounds=bounds,
        ingested_at=INGESTED_AT,
    )
    assert (result.inserted, result.rejected) == (0, 2)
    raw = conn.execute('SELECT raw FROM ops.rejected_events WHERE "offset" = 0').fetchone()[0]
    assert too_early["event_id"].encode() in raw  # decoded event kept as JSON when the bytes were not passed


def test_quality_events_land_and_are_validated(conn: duckdb.DuckDBPyConnection) -> None:
    assessed = quality_event(
        event_type="QUALITY_ASSESSED", scope="INSPECTION", event_date=None, quality_score=0.7, model_version="m2"
    )
    violated = quality_event()
    bad_date = quality_event(event_date="10/03/2025")
    bad_lot = quality_event(batch_id="LOT\r\nX-Injected: yes")
    blank_id = quality_event(event_id=" ")
    result = land_batch(
        conn,
        topic=QUALITY_TOPIC,
        offset_ranges={0: (0, 6)},
        quality_events=[
            (assessed, at(0, 0, QUALITY_TOPIC)),
            (violated, at(0, 1, QUALITY_TOPIC)),
            (bad_date, at(0, 2, QUALITY_TOPIC)),
            (dict(violated), at(0, 3, QUALITY_TOPIC)),
            (bad_lot, at(0, 4, QUALITY_TOPIC)),
            (blank_id, at(0, 5, QUALITY_TOPIC)),
        ],
    )
    assert (result.inserted_quality_events, result.rejected, result.duplicates) == (2, 3, 1)
    assert result.touched_lot_ids == frozenset()
    rows = conn.execute(
        "SELECT event_type, scope, event_date, quality_score, pass_fail, alert_level, model_version "
        "FROM raw.quality_events ORDER BY kafka_offset"
    ).fetchall()
    assert rows == [
        ("QUALITY_ASSESSED", "INSPECTION", None, 0.7, False, "CRITICAL", "m2"),
        ("THRESHOLD_VIOLATED", "DAY", dt.date(2025, 3, 10), None, False, "CRITICAL", None),
    ]
    rejected = conn.execute('SELECT reason FROM ops.rejected_events ORDER BY "offset"').fetchall()
    reasons = [reason for (reason,) in rejected]
    assert "event_date '10/03/2025' is not YYYY-MM-DD" in reasons[0]
    assert "batch_id holds a control character" in reasons[1]
    assert "event_id is whitespace only" in reasons[2]


def test_touched_partitions_come_from_new_non_canary_completions(conn: duckdb.DuckDBPyConnection) -> None:
    day1, day2 = BASE_TIME, BASE_TIME + dt.timedelta(days=1)
    already = inspection_event(batch_id="LOT-OLD", event_time=day1 - dt.timedelta(days=3))
    land_batch(conn, topic=INSPECTION_TOPIC, offset_ranges={0: (0, 1)}, inspection_events=[(already, at(0, 0))])
    batch = [
        inspection_event(batch_id="LOT-1", event_time=day1),
        inspection_event(batch_id="LOT-2", event_time=day2, event_type="INSPECTION_CREATED", quality_score=None),
        inspection_event(batch_id="chipq-canary", event_time=day2, metadata={"chipq_canary": "true"}),
        # marked as a canary, but of a real lot: counted like any other (a producer cannot hide events)
        inspection_event(batch_id="LOT-SPOOF", event_time=day1, metadata={"chipq_canary": "true"}),
        inspection_event(batch_id="LOT-BAD", event_time=day2, quality_score=math.nan),
        dict(already),
    ]
    result = land_batch(
        conn,
        topic=INSPECTION_TOPIC,
        offset_ranges={0: (1, 7)},
        inspection_events=[(event, at(0, 1 + i)) for i, event in enumerate(batch)],
    )
    assert result.touched_event_dates == {day1.date()}
    assert result.touched_lot_ids == {"LOT-1", "LOT-SPOOF"}
    flags = dict(conn.execute("SELECT batch_id, is_canary FROM raw.inspection_events").fetchall())
    assert (flags["chipq-canary"], flags["LOT-SPOOF"]) == (True, False)


def test_hostile_lot_ids_are_stored_verbatim_and_queryable(conn: duckdb.DuckDBPyConnection) -> None:
    events = [inspection_event(batch_id=lot_id, quality_score=0.5 + i / 20) for i, lot_id in enumerate(HOSTILE_LOT_IDS)]
    result = land_batch(
        conn,
        topic=INSPECTION_TOPIC,
        offset_ranges={0: (0, len(events))},
        inspection_events=[(event, at(0, i)) for i, event in enumerate(events)],
    )
    assert result.touched_lot_ids == set(HOSTILE_LOT_IDS)
    for i, lot_id in enumerate(HOSTILE_LOT_IDS):
        stored = conn.execute("SELECT batch_id FROM raw.inspection_events WHERE batch_id = ?", [lot_id]).fetchall()
        assert stored == [(lot_id,)]
        mart = rewrite_lot_quality(conn, lot_id)
        assert mart.row_count == 1
        assert mart.preview["lot_id"].tolist() == [lot_id]
        score = conn.execute(
            "SELECT mean_quality_score FROM marts.lot_quality_scores WHERE lot_id = ?", [lot_id]
        ).fetchone()
        assert score == (pytest.approx(0.5 + i / 20),)
    assert count(conn, "raw.inspection_events") == len(HOSTILE_LOT_IDS)
    assert count(conn, "marts.lot_quality_scores") == len(HOSTILE_LOT_IDS)


def test_a_warehouse_of_the_previous_version_is_migrated_once(conn: duckdb.DuckDBPyConnection) -> None:
    land_batch(
        conn,
        topic=INSPECTION_TOPIC,
        offset_ranges={0: (0, 2)},
        inspection_events=[(inspection_event(batch_id=f"LOT-{i}"), at(0, i)) for i in range(2)],
    )
    # what the previous version wrote: no change numbers, no defect dates, no lot days
    for table, column in [
        ("raw.inspection_events", "landing_seq"),
        ("raw.defects", "landing_seq"),
        ("raw.defects", "event_date"),
        ("raw.quality_events", "landing_seq"),
        ("ops.rejected_events", "landing_seq"),
        ("ops.alert_outbox", "change_seq"),
    ]:
        conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    conn.execute("DROP TABLE ops.lot_days")
    ensure_schema(conn)
    assert conn.execute("SELECT event_date FROM raw.defects").fetchall() == [(BASE_TIME.date(),)] * 2
    assert sorted(conn.execute("SELECT lot_id FROM ops.lot_days").fetchall()) == [("LOT-0",), ("LOT-1",)]
    ensure_schema(conn)  # and nothing more the next time
    assert count(conn, "ops.lot_days") == 2


def test_column_wise_checks_of_decoded_events_match_the_field_by_field_ones() -> None:
    from chipq_pipelines.warehouse.prepare import prepare_batch
    from chipq_pipelines.warehouse.samples import defect

    def batch(bad: bool) -> list:
        events = [inspection_event(batch_id=f"LOT-{i % 3}") for i in range(30)]
        events.append(dict(events[4]))  # a producer retry
        if bad:
            events[2]["quality_score"] = float("nan")
            events[5]["event_time"] = BASE_TIME.replace(year=1999)
            events[7]["defects"] = [defect(confidence=1.5)]
            events[9]["defects"] = [{**defect(), "location": {"x": math.inf, "y": 0.0}}]
            events[11]["batch_id"] = "  "
            events[12]["chip_id"] = "CHIP\x1b[2J"
            events[13]["wafer_id"] = "W\x7f"
            events.append({**events[2], "quality_score": 0.5})  # a valid repeat of a rejected event id
        return [(event, at(i % 2, i)) for i, event in enumerate(events)]

    at_landing = BASE_TIME + dt.timedelta(hours=1)
    for bad in (False, True):
        events = batch(bad)
        general = prepare_batch(events, ingested_at=at_landing)
        checked = prepare_batch(events, ingested_at=at_landing, schema_checked=True)
        assert checked.inspections.equals(general.inspections)
        assert checked.defects.equals(general.defects)
        assert checked.rejects == general.rejects
        assert checked.in_batch_duplicates == general.in_batch_duplicates
        assert len(general.rejects) == (7 if bad else 0)
