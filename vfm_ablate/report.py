"""Paper-style results from the tracking store alone: tables of mean ± std over seeds, a scale plot, a regime bar chart.

Rows are backbones (family × scale), columns training data × test metric × regime. A cell averages the FINISHED
repeats (different seeds) of one setting; failed, killed and unfinished repeats are counted in the cell, never
averaged away, and a setting that was never run shows "—".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import VfmAblateError
from .tracking import (
    ERROR_TAG,
    SWEEP_ID_TAG,
    SWEEP_NAME_TAG,
    ROLE_TAG,
    TRIAL_ID_TAG,
    check_id,
    search_all_runs,
    sqlite_path,
    tracking_client,
)
from .validation import suggest

SCALE_ORDER = ["tiny", "XS", "S", "M", "B", "L", "G", "H", "H+", "7B"]
REGIME_ORDER = ["frozen", "lora", "full"]
# repeats of one setting differ only in these
REPEAT_PARAMS = {"seed", "split_seed"}
# settings that cannot change a test metric (placement, caching, outputs, diagnostics) or that restate the backbone
NON_CONDITION_PARAMS = {"device", "feature_cache", "feature_cache_dir", "num_overlays", "save_checkpoint"}
NON_CONDITION_PREFIXES = ("diagnostics.", "backbone.")
# where each table axis comes from
LAYOUT_PARAMS = {"backbone", "regime", "data.train", "data.sampling", "data.weights", "data.test"}
KEYS = ["family", "scale", "backbone", "train", "test", "regime", "variant"]
ROW_KEYS = KEYS[:3]
COL_KEYS = KEYS[3:]
MISSING = "—"
UNFINISHED = ("RUNNING", "SCHEDULED")


# ----------------------------------------------------------------------------------------------- reading runs


def load_runs(tracking_uri: str, experiment: str, sweep_id: str | None = None) -> pd.DataFrame:
    """One row per trial run of `experiment`: run_id, status, trial/sweep ids, `params.<key>`, `metrics.<key>`."""
    db = sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        raise VfmAblateError(f"no MLflow database at {db} (tracking URI {tracking_uri}); pass --tracking-uri")
    client = tracking_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = [e.name for e in client.search_experiments()]
        raise VfmAblateError(suggest(experiment, names, "MLflow experiment", tracking_uri))
    filt = f"tags.`{ROLE_TAG}` = 'trial'"
    if sweep_id:
        filt += f" and tags.`{SWEEP_ID_TAG}` = '{check_id(sweep_id, 'sweep id')}'"
    rows = []
    for run in search_all_runs(client, found.experiment_id, filt):
        tags = run.data.tags
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "status": run.info.status,
            "start_time": run.info.start_time,
            "end_time": run.info.end_time,
            "trial_id": tags.get(TRIAL_ID_TAG, ""),
            "sweep_id": tags.get(SWEEP_ID_TAG, ""),
            "sweep_name": tags.get(SWEEP_NAME_TAG, ""),
            "error": tags.get(ERROR_TAG, ""),
        }
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        rows.append(row)
    base = ["run_id", "run_name", "status", "start_time", "end_time", "trial_id", "sweep_id", "sweep_name", "error"]
    df = pd.DataFrame(rows, columns=None if rows else base)
    extra = sorted(c for c in df.columns if c not in base)
    return df[base + extra].reset_index(drop=True)


# ----------------------------------------------------------------------------------------------- the table


@dataclass
class SummaryTable:
    """`cells`: display strings (rows family/scale/backbone × columns train/test/regime/variant);
    `stats`: one row per cell with mean, std (ddof=1), n and the failed/killed/unfinished/no-value counts."""

    metric: str
    cells: pd.DataFrame
    stats: pd.DataFrame
    variant_params: list[str]
    duplicates_dropped: int


def summary_table(df: pd.DataFrame, metric: str = "iou_fg", variant_params: list[str] | None = None) -> SummaryTable:
    """Aggregate trial runs into the paper's table for `metric` (`<metric>/<dataset>`, `macro_<metric>`, `pooled_<metric>`).

    Settings that vary besides the table axes and the seeds (e.g. `lora.rank`) split columns as "variants"
    (auto-detected unless `variant_params` is given), so different settings are never averaged together.
    A trial id counts once (its latest run): re-runs of identical settings are not extra repeats.
    """
    if df.empty:
        raise VfmAblateError("no trial runs to summarise (is this the right experiment / tracking URI?)")
    runs, dropped = _one_run_per_trial(df)
    variants = list(variant_params) if variant_params is not None else _varying_condition_params(runs)
    long = _long_records(runs, metric, variants)
    stats = _cell_stats(long)
    cells = _pivot(stats)
    return SummaryTable(metric, cells, stats, variants, dropped)


def _param(runs: pd.DataFrame, key: str, default: str = "") -> pd.Series:
    col = f"params.{key}"
    if col not in runs:
        return pd.Series([default] * len(runs), index=runs.index, dtype=object)
    return runs[col].fillna(default).astype(str)


def _one_run_per_trial(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The latest run of each trial id (FINISHED preferred); runs without a trial id are kept as they are."""
    runs = df.copy()
    runs["_finished"] = runs["status"] == "FINISHED"
    runs = runs.sort_values(["_finished", "start_time"], kind="stable")
    has_id = runs["trial_id"].astype(str) != ""
    kept = pd.concat([runs[has_id].drop_duplicates("trial_id", keep="last"), runs[~has_id]])
    return kept.drop(columns="_finished").sort_index(), len(runs) - len(kept)


def _varying_condition_params(runs: pd.DataFrame) -> list[str]:
    out = []
    for col in runs.columns:
        if not col.startswith("params."):
            continue
        key = col[len("params.") :]
        if key in REPEAT_PARAMS or key in NON_CONDITION_PARAMS or key in LAYOUT_PARAMS:
            continue
        if key.startswith(NON_CONDITION_PREFIXES):
            continue
        if runs[col].fillna("").astype(str).nunique() > 1:
            out.append(key)
    return sorted(out)


def train_label(datasets: str, sampling: str, weights: str = "") -> str:
    """`lucchi_pp`, or for several datasets `lucchi_pp+vnc (balanced)` / `(weighted 1,3)`."""
    names = [d for d in datasets.split(",") if d]
    label = "+".join(names)
    if len(names) > 1:
        label += f" ({sampling} {weights})" if sampling == "weighted" and weights else f" ({sampling})"
    return label


def _expected_tests(datasets: list[str], metric: str) -> list[str]:
    keys = [f"{metric}/{d}" for d in datasets]
    if len(datasets) > 1:
        keys += [f"macro_{metric}", f"pooled_{metric}"]
    return keys


def metric_label(metric_key: str, metric: str) -> str:
    """`iou_fg/vnc` -> `vnc`; `macro_iou_fg` -> `macro`; `pooled_iou_fg` -> `pooled`."""
    if metric_key.startswith(f"{metric}/"):
        return metric_key[len(metric) + 1 :]
    return metric_key[: -len(metric) - 1] if metric_key.endswith(f"_{metric}") else metric_key


def _long_records(runs: pd.DataFrame, metric: str, variants: list[str]) -> pd.DataFrame:
    """One record per (run, test metric it should have), so a failed run lands in every cell it was meant for."""
    backbone = _param(runs, "backbone", "?")
    family = _param(runs, "backbone.family")
    family = family.where(family != "", backbone)
    scale = _param(runs, "backbone.scale")
    regime = _param(runs, "regime", "?")
    train = _param(runs, "data.train")
    sampling = _param(runs, "data.sampling", "natural")
    weights = _param(runs, "data.weights")
    test = _param(runs, "data.test")
    variant_cols = {k: _param(runs, k) for k in variants}
    size = _backbone_size(runs)
    records = []
    for idx in runs.index:
        tested = [d for d in (test[idx] or train[idx]).split(",") if d]
        keys = _expected_tests(tested, metric)
        keys += sorted(
            c[len("metrics.") :]
            for c in runs.columns
            if c.startswith("metrics.")
            and pd.notna(runs.at[idx, c])
            and c[len("metrics.") :] not in keys
            and (c.startswith(f"metrics.{metric}/") or c in (f"metrics.macro_{metric}", f"metrics.pooled_{metric}"))
        )
        variant = ", ".join(
            f"{k}={variant_cols[k][idx]}" for k in variants if regime[idx] == "lora" or not k.startswith("lora.")
        )  # lora.* settings mean nothing for frozen/full trials (the sweep planner collapses them too)
        for key in keys:
            col = f"metrics.{key}"
            value = runs.at[idx, col] if col in runs else np.nan
            records.append(
                {
                    "family": family[idx],
                    "scale": scale[idx],
                    "backbone": backbone[idx],
                    "train": train_label(train[idx], sampling[idx], weights[idx]),
                    "test": metric_label(key, metric),
                    "regime": regime[idx],
                    "variant": variant,
                    "status": runs.at[idx, "status"],
                    "value": float(value) if pd.notna(value) else np.nan,
                    "backbone_size": size[idx],
                    "run_id": runs.at[idx, "run_id"],
                }
            )
    return pd.DataFrame.from_records(records)


def _backbone_size(runs: pd.DataFrame) -> pd.Series:
    """Backbone parameter count: the runner's `backbone.params`, else params/total − params/head − params/lora."""
    given = pd.to_numeric(_param(runs, "backbone.params", "nan"), errors="coerce")

    def metric(name: str) -> pd.Series:
        col = f"metrics.{name}"
        return pd.to_numeric(runs[col], errors="coerce") if col in runs else pd.Series(np.nan, index=runs.index)

    derived = metric("params/total") - metric("params/head") - metric("params/lora").fillna(0.0)
    return given.where(given.notna(), derived)


def format_cell(values: list[float], counts: dict[str, int]) -> str:
    """`0.731 ± 0.012 (5)` plus `failed (k)`, `killed (k)`, `running (k)`, `no value (k)` for repeats without a number."""
    parts = []
    n = len(values)
    if n == 1:
        parts.append(f"{values[0]:.3f} (1)")
    elif n > 1:
        parts.append(f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f} ({n})")
    for label in ("failed", "killed", "running", "no value"):
        if counts.get(label):
            parts.append(f"{label} ({counts[label]})")
    return "; ".join(parts) if parts else MISSING


def _cell_stats(long: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for key, group in long.groupby(KEYS, sort=False, dropna=False):
        finished = group[group["status"] == "FINISHED"]
        good = finished["value"][np.isfinite(finished["value"])]
        values = [float(v) for v in good]
        counts = {
            "failed": int((group["status"] == "FAILED").sum()),
            "killed": int((group["status"] == "KILLED").sum()),
            "running": int(group["status"].isin(UNFINISHED).sum()),
            "no value": len(finished) - len(values),
        }
        sizes = pd.to_numeric(group["backbone_size"], errors="coerce").dropna()
        rows.append(
            {
                **dict(zip(KEYS, key)),
                "mean": float(np.mean(values)) if values else np.nan,
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else np.nan,
                "n": len(values),
                "n_failed": counts["failed"],
                "n_killed": counts["killed"],
                "n_running": counts["running"],
                "n_no_value": counts["no value"],
                "backbone_size": float(sizes.median()) if len(sizes) else np.nan,
                "cell": format_cell(values, counts),
            }
        )
    stats = pd.DataFrame(rows)
    return stats.sort_values(by=KEYS, key=_sort_key).reset_index(drop=True)


def _scale_rank(scale: str) -> int:
    return SCALE_ORDER.index(scale) if scale in SCALE_ORDER else len(SCALE_ORDER)


def _sort_key(col: pd.Series) -> pd.Series:
    """Scales S<B<L<G<H<H+<7B, regimes frozen<lora<full, single datasets before combinations, macro/pooled last."""
    if col.name == "scale":
        return col.map(lambda s: (_scale_rank(s), s))
    if col.name == "regime":
        return col.map(lambda r: (REGIME_ORDER.index(r) if r in REGIME_ORDER else len(REGIME_ORDER), r))
    if col.name == "train":
        return col.map(lambda t: (t.count("+"), t))
    if col.name == "test":
        return col.map(lambda t: ({"macro": 1, "pooled": 2}.get(t, 0), t))
    return col


def _pivot(stats: pd.DataFrame) -> pd.DataFrame:
    """Wide display table; a (row, column) combination with no run at all gets "—"."""
    rows = list(dict.fromkeys(map(tuple, stats[ROW_KEYS].itertuples(index=False, name=None))))
    cols = list(dict.fromkeys(map(tuple, stats[COL_KEYS].itertuples(index=False, name=None))))
    cols.sort(key=lambda c: tuple(_sort_key(pd.Series([v], name=k)).iloc[0] for k, v in zip(COL_KEYS, c)))
    cells = pd.DataFrame(
        MISSING,
        index=pd.MultiIndex.from_tuples(rows, names=ROW_KEYS),
        columns=pd.MultiIndex.from_tuples(cols, names=COL_KEYS),
        dtype=object,
    )
    for rec in stats.itertuples(index=False):
        cells.loc[(rec.family, rec.scale, rec.backbone), (rec.train, rec.test, rec.regime, rec.variant)] = rec.cell
    return cells


def column_label(train: str, test: str, regime: str, variant: str) -> str:
    """`lucchi_pp+vnc (balanced) → vnc · lora` (+ ` · lora.rank=8` for a variant)."""
    label = f"{train} → {test} · {regime}"
    return f"{label} · {variant}" if variant else label


def flat_cells(table: SummaryTable) -> pd.DataFrame:
    """The display table with one header row: family, scale, backbone, then one column per cell label."""
    flat = table.cells.copy()
    flat.columns = [column_label(*c) for c in flat.columns]
    return flat.reset_index()


def to_markdown(table: SummaryTable) -> str:
    """A GitHub-flavoured Markdown table plus a line saying what the cells mean."""
    flat = flat_cells(table)
    header = [str(c) for c in flat.columns]

    def esc(text: Any) -> str:
        return str(text).replace("|", "\\|")

    lines = [
        "| " + " | ".join(esc(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in flat.itertuples(index=False):
        lines.append("| " + " | ".join(esc(v) for v in row) + " |")
    note = (
        f"Metric: {table.metric} (`{table.metric}/<dataset>`, `macro_{table.metric}` = mean over test datasets, "
        f"`pooled_{table.metric}` = over all their pixels). Cells: mean ± sample std (ddof=1) over the FINISHED "
        "repeats (n); failed/killed/running repeats and runs without the metric are listed, not averaged; "
        f"{MISSING} = not run."
    )
    if table.variant_params:
        note += f" Columns also split by: {', '.join(table.variant_params)}."
    if table.duplicates_dropped:
        note += f" {table.duplicates_dropped} older run(s) of an already-counted trial id were not counted again."
    return "\n".join(lines) + "\n\n" + note + "\n"


# ----------------------------------------------------------------------------------------------- figures


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
            line = line.assign(_rank=line["scale"].map(_scale_rank))
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
            ranks = sorted(set(stats["scale"].map(_scale_rank)))
            ax.set_xticks(ranks, [next(s for s in stats["scale"] if _scale_rank(s) == r) for r in ranks])
            ax.set_xlabel("backbone scale")
        ax.set_ylabel(table.metric if test in ("macro", "pooled") else f"{table.metric} ({test})")
        ax.set_title(f"train {train} → test {test}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def regime_bar_chart(table: SummaryTable, path: str | Path) -> Path:
    """Bars per backbone, one per regime, error bars = std; settings with runs but no value are marked "failed"/"no value"."""
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
        ax.set_xticks(range(len(backbones)), [f"{f} {s}".strip() for f, s, _ in backbones], rotation=30, ha="right", fontsize=8)
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


# ----------------------------------------------------------------------------------------------- writing


def write_report(table: SummaryTable, out_dir: str | Path, runs: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write summary.md, summary.csv (display), summary_stats.csv (numbers), runs.csv, scale_plot.png, regime_bars.png."""
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
