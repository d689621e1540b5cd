"""Figures of a summary table: IoU against backbone size, and bars per backbone and regime."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import VfmAblateError
from .tables import SummaryTable, scale_rank


def _panels(stats: pd.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(stats["train"], stats["test"])))


def _grid(n: int) -> tuple[Any, list[Any]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(3, max(1, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.0 * nrows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


_LINESTYLES = {"frozen": "-", "lora": "--", "full": ":"}


def scale_plot(table: SummaryTable, path: str | Path) -> Path:
    """IoU vs backbone size: a line per family × regime (frozen solid, LoRA dashed), error bars = std.

    One panel per training data × test metric; x is the parameter count (log) when every backbone has one.
    """
    import matplotlib.pyplot as plt

    stats = table.stats[table.stats["n"] > 0]
    if stats.empty:
        raise VfmAblateError("scale plot: no FINISHED run has a value for the metric")
    use_size = bool(stats["backbone_size"].notna().all())
    panels = _panels(stats)
    fig, axes = _grid(len(panels))
    families = sorted(stats["family"].unique())
    colours = {f: plt.get_cmap("tab10")(i % 10) for i, f in enumerate(families)}
    for ax, (train, test) in zip(axes, panels):
        panel = stats[(stats["train"] == train) & (stats["test"] == test)]
        for (family, regime, variant), line in panel.groupby(["family", "regime", "variant"], sort=True):
            line = line.assign(_rank=line["scale"].map(scale_rank))
            line = line.sort_values("backbone_size" if use_size else "_rank")
            x = line["backbone_size"] / 1e6 if use_size else line["_rank"]
            label = f"{family} {regime}" + (f" ({variant})" if variant else "")
            ax.errorbar(
                x, line["mean"], yerr=line["std"].fillna(0.0), label=label, color=colours[family],
                linestyle=_LINESTYLES.get(regime, "-."), marker="o", capsize=3,
            )  # fmt: skip
            for xi, yi, s in zip(x, line["mean"], line["scale"]):
                ax.annotate(s, (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=7)
        if use_size:
            from matplotlib.ticker import NullFormatter

            sizes = sorted(set(panel["backbone_size"].dropna() / 1e6))
            ax.set_xscale("log")
            ax.set_xticks(sizes, [f"{v:.3g}" for v in sizes])
            ax.xaxis.set_minor_formatter(NullFormatter())
            if len(sizes) == 1:
                ax.set_xlim(sizes[0] / 2, sizes[0] * 2)
            ax.set_xlabel("backbone parameters (M)")
        else:
            ranks = sorted(set(stats["scale"].map(scale_rank)))
            ax.set_xticks(ranks, [next(s for s in stats["scale"] if scale_rank(s) == r) for r in ranks])
            ax.set_xlabel("backbone scale")
        ax.set_ylabel(table.metric if test in ("macro", "pooled") else f"{table.metric} ({test})")
        ax.set_title(f"train {train} → test {test}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def regime_bar_chart(table: SummaryTable, path: str | Path) -> Path:
    """Bars per backbone, one per regime, error bars = std; settings with runs but no value are marked
    "failed"/"no value"."""
    stats = table.stats
    panels = _panels(stats)
    fig, axes = _grid(len(panels))
    for ax, (train, test) in zip(axes, panels):
        panel = stats[(stats["train"] == train) & (stats["test"] == test)]
        backbones = list(dict.fromkeys(zip(panel["family"], panel["scale"], panel["backbone"])))
        groups = list(dict.fromkeys(zip(panel["regime"], panel["variant"])))
        width = 0.8 / max(1, len(groups))
        for j, (regime, variant) in enumerate(groups):
            sub = panel[(panel["regime"] == regime) & (panel["variant"] == variant)]
            by_row = {(r.family, r.scale, r.backbone): r for r in sub.itertuples(index=False)}
            xs, heights, errs = [], [], []
            for i, row in enumerate(backbones):
                rec = by_row.get(row)
                x = i - 0.4 + width * (j + 0.5)
                if rec is None:
                    continue
                if rec.n > 0:
                    xs.append(x)
                    heights.append(rec.mean)
                    errs.append(0.0 if math.isnan(rec.std) else rec.std)
                else:
                    ax.text(x, 0.01, rec.cell, rotation=90, ha="center", va="bottom", fontsize=6, color="crimson")
            label = regime + (f" ({variant})" if variant else "")
            ax.bar(xs, heights, width=width, yerr=errs, capsize=2, label=label)
        ax.set_xticks(
            range(len(backbones)), [f"{f} {s}".strip() for f, s, _ in backbones], rotation=30, ha="right", fontsize=8
        )
        ax.set_xlim(-0.5, len(backbones) - 0.5)
        ax.set_ylim(0, 1)
        ax.set_ylabel(table.metric)
        ax.set_title(f"train {train} → test {test}", fontsize=9)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
