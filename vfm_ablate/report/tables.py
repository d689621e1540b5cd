"""Paper-style tables from the tracking store alone: mean ± std over seeds per setting.

Rows are backbones (family × scale), columns training data × test metric × regime. A cell averages the FINISHED
repeats (different seeds) of one setting; failed, killed and unfinished repeats are counted in the cell, never
averaged away, and a setting that was never run shows "—".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..config import ALL_LABELLED
from ..errors import VfmAblateError
from ..metric_names import IOU
from ..text_tables import markdown_table
from .runs import run_specs

SCALE_ORDER = ["tiny", "XS", "S", "M", "B", "L", "G", "H", "H+", "7B"]
REGIME_ORDER = ["frozen", "lora", "full"]
# repeats of one setting differ only in these
REPEAT_PARAMS = {"seed", "split_seed"}
# settings that cannot change a test metric (placement, caching, outputs, diagnostics) or that restate the backbone
NON_CONDITION_PARAMS = {"device", "feature_cache", "feature_cache_dir", "num_overlays", "save_checkpoint"}
NON_CONDITION_PREFIXES = ("diagnostics.", "backbone.")
# where each table axis comes from
LAYOUT_PARAMS = {"backbone", "regime", "data.train", "data.sampling", "data.weights", "data.test"}
# the alignment settings (alignment.*, data.target) split cells as one variant: the method's label
ALIGNMENT = "alignment"
KEYS = ["family", "scale", "backbone", "train", "test", "regime", "variant"]
ROW_KEYS = KEYS[:3]
COL_KEYS = KEYS[3:]
MISSING = "—"
UNFINISHED = ("RUNNING", "SCHEDULED")


@dataclass
class SummaryTable:
    """`cells`: display strings (rows family/scale/backbone × columns train/test/regime/variant);
    `stats`: one row per cell with mean, std (ddof=1), n and the failed/killed/unfinished/no-value counts."""

    metric: str
    cells: pd.DataFrame
    stats: pd.DataFrame
    variant_params: list[str]
    duplicates_dropped: int


def summary_table(df: pd.DataFrame, metric: str = IOU, variant_params: list[str] | None = None) -> SummaryTable:
    """Aggregate trial runs into the paper's table for `metric` (`<metric>/<dataset>`, `macro_<metric>`,
    `pooled_<metric>`).

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


def unset_value(key: str) -> str:
    """What a run that logged no `key` had: `all` for a `data.labelled.<dataset>` entry (every image labelled),
    else nothing."""
    return ALL_LABELLED if key.startswith("data.labelled.") else ""


def _param(runs: pd.DataFrame, key: str, default: str | None = None) -> pd.Series:
    default = unset_value(key) if default is None else default
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
        if key.startswith(NON_CONDITION_PREFIXES) or key.startswith(f"{ALIGNMENT}.") or key == "data.target":
            continue
        if runs[col].fillna("").astype(str).nunique() > 1:
            out.append(key)
    if alignment_labels(runs).nunique() > 1:
        out.append(ALIGNMENT)
    return sorted(out)


def alignment_labels(runs: pd.DataFrame) -> pd.Series:
    """Per run its alignment method as one label (`none`, `mmd`, `histogram+standardise`, ...); where one method
    adapts one training data to several target datasets, the target too: `mmd → lucchi_pp`."""
    methods = pd.Series([spec.alignment.label() for spec in run_specs(runs)], index=runs.index, dtype=object)
    target = _param(runs, "data.target")
    targets_per_setting = target.groupby([_param(runs, "data.train"), methods]).transform("nunique")
    shown = (targets_per_setting > 1) & (target != "")
    suffix = " → " + target.str.replace(",", "+")
    return methods.where(~shown, methods + suffix)


def train_label(datasets: str, sampling: str, weights: str = "") -> str:
    """`lucchi_pp`, or for several datasets `lucchi_pp+vnc (balanced)` / `(weighted 1,3)`."""
    names = [d for d in datasets.split(",") if d]
    label = "+".join(names)
    if len(names) > 1 and sampling:
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
    variant_cols = {k: alignment_labels(runs) if k == ALIGNMENT else _param(runs, k) for k in variants}
    size = _backbone_size(runs)
    specs = run_specs(runs)
    records = []
    for idx in runs.index:
        spec = specs[idx]
        keys = _expected_tests(spec.data.test_datasets, metric)
        keys += sorted(
            c[len("metrics.") :]
            for c in runs.columns
            if c.startswith("metrics.")
            and pd.notna(runs.at[idx, c])
            and c[len("metrics.") :] not in keys
            and (c.startswith(f"metrics.{metric}/") or c in (f"metrics.macro_{metric}", f"metrics.pooled_{metric}"))
        )
        unused = spec.inapplicable_settings()  # e.g. lora.* of a frozen trial (the sweep planner collapses them too)
        variant = ", ".join(f"{k}={variant_cols[k][idx]}" for k in variants if not covered(k, unused))
        # a zero-shot train dataset (data.labelled 0) is named so, and the sampling it made inapplicable is not shown
        shown_train = ",".join(f"{d}[0]" if d in spec.data.zero_shot else d for d in train[idx].split(",") if d)
        shown_sampling = "" if "data.sampling" in unused else sampling[idx]
        for key in keys:
            col = f"metrics.{key}"
            value = runs.at[idx, col] if col in runs else np.nan
            records.append(
                {
                    "family": family[idx],
                    "scale": scale[idx],
                    "backbone": backbone[idx],
                    "train": train_label(shown_train, shown_sampling, weights[idx]),
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
    """`0.731 ± 0.012 (5)` plus `failed (k)`, `killed (k)`, `stopped early (k)` (by ASHA), `running (k)`,
    `no value (k)` for repeats without a number."""
    parts = []
    n = len(values)
    if n == 1:
        parts.append(f"{values[0]:.3f} (1)")
    elif n > 1:
        parts.append(f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f} ({n})")
    for label in ("failed", "killed", "stopped early", "running", "no value"):
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
            "stopped early": int((group["status"] == "STOPPED").sum()),  # by the search's scheduler (ASHA)
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
                "n_stopped": counts["stopped early"],
                "n_running": counts["running"],
                "n_no_value": counts["no value"],
                "backbone_size": float(sizes.median()) if len(sizes) else np.nan,
                "cell": format_cell(values, counts),
            }
        )
    stats = pd.DataFrame(rows)
    return stats.sort_values(by=KEYS, key=_sort_key).reset_index(drop=True)


def scale_rank(scale: str) -> int:
    return SCALE_ORDER.index(scale) if scale in SCALE_ORDER else len(SCALE_ORDER)


def _sort_key(col: pd.Series) -> pd.Series:
    """Scales S<B<L<G<H<H+<7B, regimes frozen<lora<full, single datasets before combinations, macro/pooled last."""
    if col.name == "scale":
        return col.map(lambda s: (scale_rank(s), s))
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
    columns = [str(c) for c in flat.columns]
    rows = [dict(zip(columns, row)) for row in flat.itertuples(index=False)]
    note = (
        f"Metric: {table.metric} (`{table.metric}/<dataset>`, `macro_{table.metric}` = mean over test datasets, "
        f"`pooled_{table.metric}` = over all their pixels). Cells: mean ± sample std (ddof=1) over the FINISHED "
        "repeats (n); failed/killed/stopped early (ASHA)/running repeats and runs without the metric are listed, "
        "not averaged; "
        f"{MISSING} = not run."
    )
    if table.variant_params:
        note += f" Columns also split by: {', '.join(table.variant_params)}."
    if table.duplicates_dropped:
        note += f" {table.duplicates_dropped} older run(s) of an already-counted trial id were not counted again."
    return markdown_table(rows, columns) + "\n\n" + note + "\n"


def covered(key: str, settings: list[str]) -> bool:
    """Whether a dotted setting lies under one of `settings` (a section name covers its keys)."""
    return any(key == s or key.startswith(s + ".") for s in settings)
