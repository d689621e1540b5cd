"""Figures of a summary table: IoU against backbone size, bars per backbone and regime, and paired minus
single-dataset training. Backbones are named as in the report's tables; error bars (sample std) only where a
cell has more than one repeat."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import VfmAblateError
from .curve import Curve
from .study import backbone_labels, paired_vs_single
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
    names = backbone_labels(table.stats)
    for ax, (train, test) in zip(axes, panels):
        panel = stats[(stats["train"] == train) & (stats["test"] == test)]
        for (family, regime, variant), line in panel.groupby(["family", "regime", "variant"], sort=True):
            line = line.assign(_rank=line["scale"].map(scale_rank))
            line = line.sort_values("backbone_size" if use_size else "_rank")
            x = line["backbone_size"] / 1e6 if use_size else line["_rank"]
            label = f"{family} {regime}" + (f" ({variant})" if variant else "")
            ax.plot(
                x, line["mean"], label=label, color=colours[family], linestyle=_LINESTYLES.get(regime, "-."), marker="o"
            )
            spread = line["n"] > 1
            if spread.any():
                ax.errorbar(
                    x[spread], line["mean"][spread], yerr=line["std"][spread], fmt="none", ecolor=colours[family],
                    capsize=3,
                )  # fmt: skip
            for xi, yi, b in zip(x, line["mean"], line["backbone"]):
                ax.annotate(names[b], (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=7)
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
    """Bars per backbone, one per regime, error bars = std where n > 1; settings with runs but no value are
    marked "failed"/"no value"."""
    stats = table.stats
    names = backbone_labels(stats)
    panels = _panels(stats)
    fig, axes = _grid(len(panels))
    every_group = list(dict.fromkeys(zip(stats["regime"], stats["variant"])))
    colours = _colours(len(every_group))  # one colour per regime × variant in every panel
    shared_legend = len(every_group) > 4  # many settings: one legend below the panels, not one per panel
    for ax, (train, test) in zip(axes, panels):
        panel = stats[(stats["train"] == train) & (stats["test"] == test)]
        backbones = list(dict.fromkeys(zip(panel["family"], panel["scale"], panel["backbone"])))
        groups = [g for g in every_group if g in set(zip(panel["regime"], panel["variant"]))]
        width = 0.8 / max(1, len(groups))
        for j, (regime, variant) in enumerate(groups):
            sub = panel[(panel["regime"] == regime) & (panel["variant"] == variant)]
            by_row = {(r.family, r.scale, r.backbone): r for r in sub.itertuples(index=False)}
            xs, heights, spread = [], [], []
            for i, row in enumerate(backbones):
                rec = by_row.get(row)
                x = i - 0.4 + width * (j + 0.5)
                if rec is None:
                    continue
                if rec.n > 0:
                    xs.append(x)
                    heights.append(rec.mean)
                    if rec.n > 1 and not math.isnan(rec.std):
                        spread.append((x, rec.mean, rec.std))
                else:
                    ax.text(x, 0.01, rec.cell, rotation=90, ha="center", va="bottom", fontsize=6, color="crimson")
            label = regime + (f" ({variant})" if variant else "")
            colour = colours[every_group.index((regime, variant))]
            bars = ax.bar(xs, heights, width=width, label=label, color=colour)
            # the value on every bar: an IoU of 0.000 is a bar of no height, which must not read as "not run"
            ax.bar_label(bars, fmt="%.2f", fontsize=6 if len(groups) <= 8 else 4, padding=1)
            if spread:
                ex, ey, err = zip(*spread)
                ax.errorbar(ex, ey, yerr=err, fmt="none", ecolor="black", capsize=2, linewidth=1)
        ax.set_xticks(range(len(backbones)), [names[b] for _, _, b in backbones], rotation=20, ha="right", fontsize=8)
        ax.set_xlim(-0.5, len(backbones) - 0.5)
        ax.set_ylim(0, 1)
        ax.set_ylabel(table.metric)
        ax.set_title(f"train {train} → test {test}", fontsize=9)
        if not shared_legend:
            ax.legend(fontsize=7)
    if shared_legend:
        import matplotlib.patches as mpatches

        handles = [
            mpatches.Patch(color=colours[i], label=regime + (f" ({variant})" if variant else ""))
            for i, (regime, variant) in enumerate(every_group)
        ]
        fig.tight_layout()
        # below the panels; the saved image grows to hold it (`_save`: bbox_inches="tight")
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=8)
    return _save(fig, path)


def _colours(n: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def paired_vs_single_chart(table: SummaryTable, path: str | Path) -> Path | None:
    """Δ IoU (paired − single-dataset training) per backbone: one panel per paired training data, a bar per test
    dataset × regime; below zero means paired training lost IoU on that dataset. None when nothing to compare."""
    frame = paired_vs_single(table)
    deltas = [c for c in frame.columns if c.startswith("Δ ") and c != "Δ macro"] if not frame.empty else []
    if not deltas or frame[deltas].isna().all().all():
        return None
    panels = list(dict.fromkeys(frame["paired"]))
    fig, axes = _grid(len(panels))
    for ax, paired in zip(axes, panels):
        part = frame[frame["paired"] == paired]
        backbones = list(dict.fromkeys(part["backbone"]))
        series = [(r, c) for r in dict.fromkeys(part["regime"]) for c in deltas if part[c].notna().any()]
        width = 0.8 / max(1, len(series))
        for j, (regime, col) in enumerate(series):
            rows = part[part["regime"] == regime].set_index("backbone")
            xs = [i - 0.4 + width * (j + 0.5) for i, b in enumerate(backbones) if b in rows.index]
            ys = [rows.at[b, col] for b in backbones if b in rows.index]
            ax.bar(xs, ys, width=width, label=f"{col[2:]} · {regime}")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(backbones)), backbones, rotation=20, ha="right", fontsize=8)
        ax.set_xlim(-0.5, len(backbones) - 0.5)
        ax.set_ylabel(f"Δ {table.metric} (paired − single)")
        ax.set_title(f"train {paired} vs each dataset alone", fontsize=9)
        ax.legend(fontsize=7, title="test data · regime", title_fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def curve_chart(curve: Curve, path: str | Path) -> Path:
    """IoU against the number of labelled images of `curve.dataset`: one panel per test dataset (its own first),
    one line per setting, error bars = the 95 % bootstrap interval of the mean over repeats (none from one repeat).
    x is symmetric-log (0 = zero-shot, then 1, 2, 4, ... evenly), the all-labelled point marked `all (n)`."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullLocator
    from matplotlib.transforms import offset_copy

    points = curve.points
    if points.empty:
        raise VfmAblateError(f"label-efficiency curve of '{curve.dataset}': no finished run has a value")
    known = points.loc[points["x"].notna(), "x"]
    unknown_all = 2.0 * max(float(known.max()) if not known.empty else 1.0, 1.0)  # 'all' of runs that logged no n
    points = points.assign(_x=points["x"].fillna(unknown_all))
    lines = list(dict.fromkeys(points["line"]))
    colours = _colours(len(lines))
    metrics = curve.metrics
    fig, axes = _grid(len(metrics))
    for ax, metric in zip(axes, metrics):
        panel = points[points["metric"] == metric]
        ax.set_xscale("symlog", linthresh=1.0, linscale=0.5)
        for i, line in enumerate(lines):
            part = panel[panel["line"] == line].sort_values("_x")
            if part.empty:
                continue
            # lines side by side at each x (a few points apart), so their intervals do not hide each other
            dodge = offset_copy(ax.transData, fig=fig, x=4.0 * (i - (len(lines) - 1) / 2), y=0.0, units="points")
            ax.plot(
                part["_x"], part["mean"], marker="o", color=colours[i], linewidth=1.5, markersize=4, transform=dodge
            )
            bars = part[part["ci_low"].notna()]
            if not bars.empty:
                err = [bars["mean"] - bars["ci_low"], bars["ci_high"] - bars["mean"]]
                ax.errorbar(
                    bars["_x"], bars["mean"], yerr=err, fmt="none", ecolor=colours[i], capsize=3, alpha=0.8,
                    transform=dodge,
                )  # fmt: skip
        # the dodged artists do not count for autoscaling: the panel's limits from the points and their intervals
        corners = [(x, y) for c in ("mean", "ci_low", "ci_high") for x, y in zip(panel["_x"], panel[c]) if y == y]
        ax.update_datalim(corners)
        ax.autoscale_view()
        ticks = panel.drop_duplicates("labelled").sort_values("_x")
        ax.set_xticks(
            list(ticks["_x"]),
            [
                f"all\n({x:g})" if k == "all" and math.isfinite(x) else ("all" if k == "all" else f"{x:g}")
                for k, x in zip(ticks["labelled"], ticks["x"])
            ],
            fontsize=8,
        )
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel(f"labelled {curve.dataset} training images")
        ax.set_ylabel(metric)
        ax.set_title(f"test: {metric.split('/', 1)[-1]}", fontsize=9)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours[i], marker="o", label=line) for i, line in enumerate(lines)]
    fig.suptitle(f"IoU against labelled {curve.dataset} images (95 % bootstrap CI over repeats)", fontsize=10)
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(3, len(lines)), fontsize=8)
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not fig.legends:  # a figure legend placed its panels already
        fig.tight_layout()
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out
