"""The report as one self-contained HTML page: inline CSS, charts as base64 PNG, no external URL."""

from __future__ import annotations

import base64
import datetime as dt
from html import escape
from typing import Any

import pandas as pd

from chipq_pipelines.report import charts
from chipq_pipelines.report.data import ReportData
from chipq_pipelines.warehouse.formatting import terminal_text

STYLE = """
body { font-family: "DejaVu Sans", Arial, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
h1 { margin-bottom: 0.1em; } .meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: left; } th { background: #f2f2f2; }
td:first-child { white-space: nowrap; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0 2em; } figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; }
tr.CRITICAL td:nth-child(2) { color: #b00020; font-weight: bold; } tr.WARNING td:nth-child(2) { color: #a15c00; }
"""


def _img(png: bytes, alt: str, chart_id: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img id="{chart_id}" alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, int):
        return f'<td class="num">{value:,}</td>'
    if isinstance(value, float):
        return f'<td class="num">{value:.4f}</td>'
    return f"<td>{escape(terminal_text(str(value)))}</td>"  # a control character would be invisible


def _table(frame: pd.DataFrame, table_id: str, level_column: str | None = None) -> str:
    head = "".join(f"<th>{escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for record in frame.to_dict("records"):
        css = f' class="{escape(str(record[level_column]))}"' if level_column else ""
        rows.append(f"<tr{css}>" + "".join(_cell(_plain(v)) for v in record.values()) + "</tr>")
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _plain(value: Any) -> Any:
    """numpy scalars → Python, NaN/None → empty, so cells format the same whatever pandas returned."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return value.item() if hasattr(value, "item") else value


def _day(value: Any) -> str:
    return pd.Timestamp(value).strftime("%Y-%m-%d")


def _summary_table(data: ReportData) -> str:
    s = {k: _plain(v) for k, v in data.summary.items()}
    violations = int(data.violations["violations"].sum()) if len(data.violations) else 0
    by_scope = ", ".join(
        f"{_plain(r['scope'])} {_plain(r['alert_level'])}: {int(r['violations'])}"
        for r in data.violations.to_dict("records")
    )
    rows: list[tuple[str, Any]] = [
        ("inspection events landed", int(s["inspection_events"] or 0)),
        ("completed inspections (non-canary)", int(s["inspections_completed"] or 0)),
        ("events rejected with a reason", int(s["rejected_events"] or 0)),
        ("lots scored", int(s["lots_scored"] or 0)),
        ("days inspected", f"{s['days']} ({_day(s['first_day'])} → {_day(s['last_day'])})" if s["days"] else "0"),
        ("violations (alert outbox)", f"{violations:,}" + (f" — {by_scope}" if by_scope else "")),
        ("lots flagged", len(data.flagged_lots)),
    ]
    if not data.has_alerts:
        rows[5] = ("violations (alert outbox)", "no alert tables in this snapshot")
    body = "".join(f"<tr><th>{escape(label)}</th>{_cell(value)}</tr>" for label, value in rows)
    return f'<table id="summary"><tbody>{body}</tbody></table>'


def _flagged_table(data: ReportData) -> str:
    if data.flagged_lots.empty:
        return "<p>No lot has a violation.</p>" if data.has_alerts else "<p>No alert tables in this snapshot.</p>"
    scores = data.lots.set_index("lot_id")["mean_quality_score"] if len(data.lots) else pd.Series(dtype=float)
    frame = data.flagged_lots.assign(mean_quality_score=data.flagged_lots["lot_id"].map(scores))
    columns = ["lot_id", "alert_level", "mean_quality_score", "violations", "rules"]
    return _table(frame[columns], "flagged-lots", level_column="alert_level")


def render_page(data: ReportData) -> str:
    """The whole HTML document for ``data``."""
    flagged = set(data.flagged_lots["lot_id"])
    limits = data.limits
    limits_text = (
        f"centre {limits.mean_score:.4f}, σ {limits.sigma_score:.4f} — {limits.source}"
        if limits
        else "no scored lots, no limits"
    )
    pareto_png = charts.defect_pareto(data.pareto)
    trends_png = charts.defect_rate_trends(data.trends)
    control_png = charts.lot_control_chart(data.lots, limits, flagged)
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>chipq quality report</title>
<style>{STYLE}</style>
</head>
<body>
<h1>chipq quality report</h1>
<p class="meta">Snapshot {escape(str(data.snapshot_path))} (published {data.snapshot_time:%Y-%m-%d %H:%M UTC});
report generated {generated}.</p>

<h2>Summary</h2>
{_summary_table(data)}

<h2>Defect Pareto</h2>
<figure>
{_img(pareto_png, "Defect Pareto: defect count per type with cumulative percentage", "chart-pareto")}
<figcaption>Defects of completed inspections by type (marts.defect_rates), most frequent first;
the line is the cumulative share, the dotted line 80 %.</figcaption>
</figure>

<h2>Daily defect-rate trends</h2>
<figure>
{_img(trends_png, "Daily defect rate per defect type", "chart-trends")}
<figcaption>Share of the day's inspected chips with at least one defect of the type (marts.defect_rates;
a day without that defect counts as 0).</figcaption>
</figure>

<h2>Lot-score control chart</h2>
<figure>
{_img(control_png, "Control chart of lot mean quality scores with SPC limits and flagged lots", "chart-control")}
<figcaption>Lot mean quality score in time order (marts.lot_quality_scores by first_event_time).
Limits: {escape(limits_text)}. Circled: lots with a LOT-scope violation in ops.alert_outbox.</figcaption>
</figure>

<h2>Flagged lots</h2>
{_flagged_table(data)}
</body>
</html>
"""
