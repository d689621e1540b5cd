"""Write a report folder: the study's tables (CSV and in one Markdown / one self-contained HTML document), the
numbers behind them, the runs, the figures."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..metric_names import IOU
from .compare import alignment_methods, transfer_table
from .curve import curve_rows, labelled_curves
from .document import ReportParts, as_html, as_markdown, transfer_rows
from .figures import curve_chart, paired_vs_single_chart, regime_bar_chart, scale_plot
from .study import block_tables, paired_vs_single, transfer_matrices
from .tables import SummaryTable, flat_cells, summary_table

REPORT_MD = "report.md"
REPORT_HTML = "report.html"


def curve_file_stem(dataset: str) -> str:
    """`curve_<dataset>`: the label-efficiency curve's files in a report folder."""
    return "curve_" + re.sub(r"[^A-Za-z0-9._-]+", "_", dataset)


def report_parts(table: SummaryTable) -> ReportParts:
    return ReportParts(table, block_tables(table), paired_vs_single(table), transfer_matrices(table))


def write_report(
    runs: pd.DataFrame, out_dir: str | Path, metric: str = IOU, title: str = "Results"
) -> tuple[ReportParts, dict[str, Path]]:
    """Summarise `runs` (from `load_runs`) and write: report.md + report.html (the document), summary.csv /
    summary_stats.csv (every cell, display / numbers), paired_vs_single.csv, transfer.csv (when cross-dataset tests
    exist), alignment.csv (every alignment method against none, when the runs use several), runs.csv and the
    figures (regime_bars.png, scale_plot.png, paired_vs_single.png); where runs set data.labelled, the
    label-efficiency curve of each such dataset (curve_<dataset>.csv / .png, `report.curve`)."""
    table = summary_table(runs, metric=metric)
    parts = report_parts(table)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary_csv": out / "summary.csv", "stats_csv": out / "summary_stats.csv", "runs_csv": out / "runs.csv"}
    flat_cells(table).to_csv(paths["summary_csv"], index=False)
    table.stats.to_csv(paths["stats_csv"], index=False)
    runs.to_csv(paths["runs_csv"], index=False)
    if not parts.paired.empty:
        paths["paired_csv"] = out / "paired_vs_single.csv"
        parts.paired.to_csv(paths["paired_csv"], index=False)
    if parts.transfer:
        paths["transfer_csv"] = out / "transfer.csv"
        pd.concat(parts.transfer, names=["setting"]).to_csv(paths["transfer_csv"])
    if len(methods := alignment_methods(runs)) > 1 and "none" in methods:
        deltas = transfer_table(runs, n_resamples=2000)
        paths["alignment_csv"] = out / "alignment.csv"
        deltas.to_csv(paths["alignment_csv"], index=False)
        parts.alignment = transfer_rows(deltas)
    parts.figures["IoU per backbone and regime"] = paths["regime_bars"] = regime_bar_chart(
        table, out / "regime_bars.png"
    )
    if (table.stats["n"] > 0).any():
        parts.figures["IoU against backbone size"] = paths["scale_plot"] = scale_plot(table, out / "scale_plot.png")
    paired_png = paired_vs_single_chart(table, out / "paired_vs_single.png")
    if paired_png is not None:
        parts.figures["Paired minus single-dataset training"] = paths["paired_plot"] = paired_png
    for curve in labelled_curves(runs, metric, n_resamples=2000, required=False):
        name = curve_file_stem(curve.dataset)
        paths[f"{name}_csv"] = out / f"{name}.csv"
        curve.points.to_csv(paths[f"{name}_csv"], index=False)
        parts.curves[f"{curve.metrics[0]} against labelled {curve.dataset} images"] = curve_rows(curve)
        caption = f"Label-efficiency curve: {curve.dataset}"
        parts.figures[caption] = paths[f"{name}_png"] = curve_chart(curve, out / f"{name}.png")
    paths["markdown"] = out / REPORT_MD
    paths["markdown"].write_text(as_markdown(parts, title))
    paths["html"] = out / REPORT_HTML
    paths["html"].write_text(as_html(parts, title))
    return parts, paths
