"""`chipq report`: a self-contained HTML quality report from the analyst snapshot.

A defect Pareto, daily defect-rate trends per type and a lot-score control
chart with its SPC limits and flagged lots, plus a summary table; charts are
matplotlib PNGs embedded as data URIs, so the file opens anywhere offline.
"""

from __future__ import annotations

import os
from pathlib import Path

from chipq_pipelines.report.data import ReportError, load_report_data

__all__ = ["ReportError", "build_report"]


def build_report(snapshot_path: str | Path, out_path: str | Path) -> Path:
    """Write the report for the snapshot at ``snapshot_path`` to ``out_path``; returns the written path.

    Raises ``ReportError`` when there is no snapshot yet (run ``chipq catch-up``
    or ``make demo``) or the file is not a chipq analyst snapshot.
    """
    from chipq_pipelines.report.page import render_page  # matplotlib loads only when a report is built

    html = render_page(load_report_data(snapshot_path))
    out = Path(out_path).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    staging.write_text(html, encoding="utf-8")
    os.replace(staging, out)  # a browser refreshing the file never sees half a page
    return out
