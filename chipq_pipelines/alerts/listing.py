"""`chipq alerts`: recent threshold violations, read from the analyst snapshot (never the writer's file)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from chipq_pipelines.alerts.sql import load as _sql
from chipq_pipelines.warehouse.formatting import terminal_text
from chipq_pipelines.warehouse.snapshot import open_snapshot


def recent_alerts(
    snapshot_path: str | Path, *, limit: int = 20, level: str | None = None, rule: str | None = None
) -> pd.DataFrame:
    """The newest ``limit`` violations in ``ops.alerts`` of the snapshot, optionally one level or rule.

    Columns: detected_at, alert_level, rule, scope, subject (lot, or day / defect type),
    observed_value, threshold, state (open, or cleared once the subject stopped breaking the
    rule), cleared_at, published, message. Raises ``FileNotFoundError`` when no
    snapshot was published yet.
    """
    conn = open_snapshot(snapshot_path)
    try:
        exists = conn.execute(
            "SELECT count(*) FROM duckdb_views() WHERE schema_name = 'ops' AND view_name = 'alerts'"
        ).fetchone()
        if not exists or not exists[0]:
            return pd.DataFrame(
                columns=["detected_at", "alert_level", "rule", "scope", "subject", "observed_value", "threshold",
                         "state", "cleared_at", "published", "message"]
            )  # fmt: skip
        params = {"limit": limit, "level": level.upper() if level else None, "rule": rule}
        return conn.execute(_sql("recent_alerts"), params).df()
    finally:
        conn.close()


def format_alerts(frame: pd.DataFrame) -> str:
    """A terminal table of ``recent_alerts`` (or a sentence when there are none).

    Control characters in the text (a lot id from Kafka can hold ANSI escapes) are shown escaped.
    """
    if frame.empty:
        return "No threshold violations in the analyst snapshot."
    shown = frame.drop(columns=["message"]).assign(
        detected_at=frame["detected_at"].map(lambda t: t.strftime("%Y-%m-%d %H:%M:%S")),
        observed_value=frame["observed_value"].map(lambda v: f"{v:.4g}"),
        threshold=frame["threshold"].map(lambda v: f"{v:.4g}"),
        published=frame["published"].map(lambda p: "yes" if p else "pending"),
        state=[
            "open" if state != "cleared" else f"cleared {cleared:%Y-%m-%d %H:%M:%S}"
            for state, cleared in zip(frame["state"], frame["cleared_at"], strict=True)
        ],
    )
    for column in ("alert_level", "rule", "scope", "subject"):
        shown[column] = shown[column].map(lambda v: v if v is None else terminal_text(str(v)))
    return shown.drop(columns=["cleared_at"]).to_string(index=False)
