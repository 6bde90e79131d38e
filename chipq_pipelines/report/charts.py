"""The report's three charts, drawn with matplotlib (Agg) and returned as PNG bytes."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display: the report is built in CI, daemons and over ssh

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from chipq_pipelines.report.data import ControlLimits

DPI = 110
BAR_COLOUR = "#4c72b0"
LINE_COLOUR = "#dd8452"
FLAG_COLOUR = "#c44e52"
#: Sigma lines of the control chart: (k, style); ±3 sigma are the action limits.
SIGMA_LINES = ((3.0, "-"), (2.0, "--"), (1.0, ":"))


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _no_data(figure: Figure, message: str) -> bytes:
    figure.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, color="#666666")
    return _png(figure)


def defect_pareto(pareto: pd.DataFrame) -> bytes:
    """Bars of defects per type, most frequent first, with the cumulative share on a second axis."""
    figure, bars = plt.subplots(figsize=(10, 4.2))
    bars.set_title("Defect Pareto: defects by type (completed inspections)")
    if pareto.empty:
        bars.set_axis_off()
        return _no_data(figure, "no defects in the marts yet")
    counts = pareto["defect_count"].astype(int)
    labels = list(pareto["defect_type"])
    cumulative = counts.cumsum() / counts.sum() * 100.0
    drawn = bars.bar(labels, counts, color=BAR_COLOUR)
    bars.bar_label(drawn, labels=[f"{n:,}" for n in counts], fontsize=8, padding=2)
    bars.set_ylabel("defects")
    bars.tick_params(axis="x", rotation=30)
    share = bars.twinx()
    share.plot(labels, cumulative, color=LINE_COLOUR, marker="o", label="cumulative %")
    share.axhline(80, color=LINE_COLOUR, linestyle=":", linewidth=1)
    share.set_ylim(0, 105)
    share.yaxis.set_major_formatter(PercentFormatter())
    share.set_ylabel("cumulative share")
    share.legend(loc="center right")
    return _png(figure)


def defect_rate_trends(trends: pd.DataFrame) -> bytes:
    """Daily defect rate (chips with the defect / chips inspected) per defect type."""
    figure, axes = plt.subplots(figsize=(10, 4.2))
    axes.set_title("Daily defect rate per defect type")
    if trends.empty:
        axes.set_axis_off()
        return _no_data(figure, "no inspected days in the marts yet")
    days = pd.to_datetime(trends["event_date"])
    for defect_type, rows in trends.assign(day=days).groupby("defect_type", sort=True):
        axes.plot(rows["day"], rows["defect_rate"] * 100.0, marker="o", markersize=4, label=str(defect_type))
    axes.yaxis.set_major_formatter(PercentFormatter(decimals=1))
    axes.set_ylabel("chips with the defect")
    axes.set_ylim(bottom=0)
    axes.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=2, maxticks=10))
    axes.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
    if days.nunique() == 1:  # one day: widen the axis so the points do not sit on its edges
        day = days.iloc[0]
        axes.set_xlim(day - pd.Timedelta(days=1), day + pd.Timedelta(days=1))
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="defect type")
    return _png(figure)


def lot_control_chart(lots: pd.DataFrame, limits: ControlLimits | None, flagged: set[str]) -> bytes:
    """Individuals chart of lot mean quality scores in time order, with ±1/2/3 sigma lines and flagged lots.

    When a lot lies beyond ±4.5 sigma, two panels share the time axis: every lot
    at full scale (excursions can sit far below the limits), and below it the
    band around the limits, where the Western Electric zones stay readable.
    """
    scored = lots.dropna(subset=["mean_quality_score"])
    if scored.empty or limits is None:
        figure, axes = plt.subplots(figsize=(10, 4.6))
        axes.set_title("Lot mean quality score (time order of first inspection)")
        axes.set_axis_off()
        return _no_data(figure, "no scored lots in the marts yet")
    times = pd.to_datetime(scored["first_event_time"], utc=True)
    scores = scored["mean_quality_score"].astype(float)
    is_flagged = scored["lot_id"].isin(flagged)
    band = (limits.line(-4.5), limits.line(4.5))
    if band[0] <= scores.min() and scores.max() <= band[1]:  # every lot is in the band: one panel says it all
        figure, full = plt.subplots(figsize=(10, 4.6))
        panels = [full]
    else:
        figure, (full, zoom) = plt.subplots(
            2, 1, figsize=(10, 6.4), sharex=True, gridspec_kw={"height_ratios": [3, 2], "hspace": 0.12}
        )
        panels = [full, zoom]
    full.set_title("Lot mean quality score (time order of first inspection)")
    for axes in panels:
        axes.plot(times, scores, color=BAR_COLOUR, marker="o", markersize=3, linewidth=0.8, label="lot mean score")
        axes.scatter(
            times[is_flagged],
            scores[is_flagged],
            s=60,
            facecolors="none",
            edgecolors=FLAG_COLOUR,
            linewidths=1.6,
            zorder=3,
            label=f"flagged lot ({int(is_flagged.sum())})",
        )
        axes.axhline(limits.mean_score, color="#333333", linewidth=1.2, label=f"centre {limits.mean_score:.4f}")
        for k, style in SIGMA_LINES:
            for sign in (1, -1):
                axes.axhline(
                    limits.line(sign * k),
                    color=FLAG_COLOUR if k == 3 else "#777777",
                    linestyle=style,
                    linewidth=1.0,
                    label=f"±{k:g}σ ({limits.line(-k):.4f} / {limits.line(k):.4f})" if sign == 1 else None,
                )
        axes.grid(alpha=0.3)
    full.set_ylabel("mean quality score")
    full.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    bottom = panels[-1]
    if len(panels) == 2:
        bottom.set_ylim(*band)
        bottom.set_ylabel("around the limits")
    bottom.annotate(
        f"limits: {limits.source}; σ = {limits.sigma_score:.4f}",
        xy=(0, 0),
        xycoords="axes fraction",
        xytext=(0, -62),
        textcoords="offset points",
        fontsize=9,
        color="#444444",
    )
    bottom.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz="UTC"))
    bottom.tick_params(axis="x", rotation=20)
    bottom.set_xlabel("first inspection of the lot (UTC)")
    return _png(figure)
