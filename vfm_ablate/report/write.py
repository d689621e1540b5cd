"""Write a report folder: the summary table as Markdown and CSV, the numbers behind it, the runs, the figures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .figures import regime_bar_chart, scale_plot
from .tables import SummaryTable, flat_cells, to_markdown


def write_report(table: SummaryTable, out_dir: str | Path, runs: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write summary.md, summary.csv (display), summary_stats.csv (numbers), runs.csv, scale_plot.png,
    regime_bars.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out / "summary.md",
        "csv": out / "summary.csv",
        "stats_csv": out / "summary_stats.csv",
    }
    paths["markdown"].write_text(f"# Results: {table.metric}\n\n" + to_markdown(table))
    flat_cells(table).to_csv(paths["csv"], index=False)
    table.stats.to_csv(paths["stats_csv"], index=False)
    if runs is not None:
        paths["runs_csv"] = out / "runs.csv"
        runs.to_csv(paths["runs_csv"], index=False)
    if (table.stats["n"] > 0).any():
        paths["scale_plot"] = scale_plot(table, out / "scale_plot.png")
    paths["regime_bars"] = regime_bar_chart(table, out / "regime_bars.png")
    return paths
