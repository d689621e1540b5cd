"""How many labelled images close the gap? IoU against the number of labelled images of one train dataset
(`data.labelled`), one line per setting that varies besides it (backbone, regime, alignment method, ...).

Per line and labelled count: the mean over repeats with a 95 % bootstrap interval of that mean; against the same
line's all-labelled point over matched repeats (same seed and split seed, so the same nested draws): Δ = IoU_k −
IoU_all with its interval, and the share IoU_k / IoU_all (ratio of the means, its interval from resampling the
matched repeats together). x is the count each trial logged (`labelled_images/<dataset>`), so a fraction or
"all" is placed where it fell. A setting that cannot change a trial (`TrialSpec.inapplicable_settings`, e.g. the
sampling of a zero-shot trial, whose batches hold one dataset) does not split it from a line.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import VfmAblateError
from ..metric_names import IOU, iou_metric, labelled_metric
from ..text_tables import markdown_table
from .compare import METHOD, bootstrap_interval, finished_runs, is_finite, param_value, varying_conditions, with_method
from .tables import covered

ALL = "all"
CURVE_AXES = ("data.labelled",)  # what `report --curve` draws against
LINE_FIRST = ("backbone", "regime", METHOD)  # shown by value alone in a line's name, in this order


@dataclass
class Curve:
    """IoU against the labelled images of `dataset`: `points` has one row per line, labelled count and test
    metric (line, labelled, x, metric, n, mean, std, ci_low, ci_high, delta, delta_low, delta_high, share,
    share_low, share_high); `lines` the settings that tell the lines apart."""

    dataset: str
    points: pd.DataFrame
    lines: list[str]

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(self.points["metric"]))


def labelled_curves(
    runs: pd.DataFrame,
    family: str = IOU,
    *,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    required: bool = True,
) -> list[Curve]:
    """One curve per dataset that some finished run labels partly (data.labelled), over the finished runs that
    train on it; its test metrics first, then the other test datasets'. Nothing to draw is an error, or (not
    `required`: the report, which draws it when it can) no curve."""
    try:
        finished = with_method(finished_runs(runs))
        datasets = list(dict.fromkeys(d for spec in finished["spec"] for d in spec.data.labelled))
        if not datasets:
            raise VfmAblateError(
                "no finished run sets data.labelled: nothing to draw against the number of labelled images"
            )
        return [_curve(finished, d, family, confidence, n_resamples, seed) for d in datasets]
    except VfmAblateError:
        if required:
            raise
        return []


def _curve(runs: pd.DataFrame, dataset: str, family: str, confidence: float, n_resamples: int, seed: int) -> Curve:
    runs = runs[[dataset in spec.data.train for spec in runs["spec"]]].copy()
    axis = f"data.labelled.{dataset}"
    runs["_labelled"] = [str(spec.data.labelled.get(dataset, ALL)) for spec in runs["spec"]]
    runs["_x"] = [_count(row, dataset) for _, row in runs.iterrows()]
    conditions = [k for k in varying_conditions(runs, METHOD) if k != axis]
    if runs[f"params.{METHOD}"].nunique() > 1:
        conditions.append(METHOD)
    conditions.sort(key=lambda k: (LINE_FIRST.index(k) if k in LINE_FIRST else len(LINE_FIRST), k))
    lines = _lines(runs, conditions)
    prefix = f"metrics.{family}/"
    tested = [c[len("metrics.") :] for c in runs.columns if c.startswith(prefix) and runs[c].notna().any()]
    own = iou_metric(dataset, family)
    metrics = [own, *sorted(m for m in tested if m != own)] if own in tested else sorted(tested)
    if not metrics:
        raise VfmAblateError(f"no finished run that trains on '{dataset}' logged a {family}/<dataset> metric")
    rows = []
    for name, members in lines.items():
        line = runs.loc[members]
        for metric in metrics:
            rows += _points(line, name, metric, confidence, n_resamples, seed)
    points = pd.DataFrame(rows)
    if not points.empty:
        points = points.sort_values(["line", "metric", "x"], kind="stable", key=_order).reset_index(drop=True)
    return Curve(dataset, points, conditions)


def _order(column: pd.Series) -> pd.Series:
    return column if column.name == "x" else column.map({v: i for i, v in enumerate(dict.fromkeys(column))})


def _count(row: pd.Series, dataset: str) -> float:
    """The labelled images the trial had: its logged count, else (a count it set) the setting itself."""
    logged = row.get(f"metrics.{labelled_metric(dataset)}")
    if is_finite(logged):
        return float(logged)
    value = row["spec"].data.labelled.get(dataset, ALL)
    return float(value) if isinstance(value, int) else math.nan


def _lines(runs: pd.DataFrame, conditions: list[str]) -> dict[str, list[object]]:
    """Line name -> run index. A run where a condition cannot apply joins every line that agrees on the rest; a
    line is named by the conditions whose values tell lines apart."""
    keys = {}
    for idx, row in runs.iterrows():
        skip = row["spec"].inapplicable_settings()
        keys[idx] = tuple(None if k != METHOD and covered(k, skip) else param_value(row, k) for k in conditions)
    full = list(dict.fromkeys(key for key in keys.values() if None not in key))
    shown = [i for i in range(len(conditions)) if len({key[i] for key in full}) > 1 or not full]
    out: dict[str, list[object]] = {}
    for idx, key in keys.items():
        matches = [f for f in full if all(v is None or v == fv for v, fv in zip(key, f))] or [key]
        for match in matches:
            name = " · ".join(
                match[i] if conditions[i] in LINE_FIRST else f"{conditions[i]}={match[i]}"
                for i in shown
                if match[i] is not None
            )
            out.setdefault(name or "(all runs)", []).append(idx)
    return out


def _points(
    line: pd.DataFrame, name: str, metric: str, confidence: float, n_resamples: int, seed: int
) -> list[dict[str, object]]:
    col = f"metrics.{metric}"
    if col not in line:
        return []
    by_k: dict[str, dict[tuple[str, str], float]] = {}
    xs: dict[str, list[float]] = {}
    for _, row in line.iterrows():
        if not is_finite(row[col]):
            continue
        repeat = (param_value(row, "seed"), param_value(row, "split_seed"))
        if repeat in by_k.setdefault(row["_labelled"], {}):
            raise VfmAblateError(
                f"line '{name}': two finished runs with data.labelled {row['_labelled']} and seed {repeat[0]} / "
                f"split seed {repeat[1]} differ in a setting the curve cannot tell apart"
            )
        by_k[row["_labelled"]][repeat] = float(row[col])
        xs.setdefault(row["_labelled"], []).append(row["_x"])
    reference = by_k.get(ALL, {})
    out = []
    for k, values in by_k.items():
        v = np.array(list(values.values()))
        low, high = bootstrap_interval(v, confidence, n_resamples, seed)
        shared = [r for r in values if r in reference]
        a = np.array([reference[r] for r in shared])
        b = np.array([values[r] for r in shared])
        delta = (b - a) if shared and k != ALL else np.array([])
        d_low, d_high = bootstrap_interval(delta, confidence, n_resamples, seed) if len(delta) else (math.nan,) * 2
        share, s_low, s_high = _share(a, b, confidence, n_resamples, seed) if len(delta) else (math.nan,) * 3
        finite_x = [x for x in xs[k] if math.isfinite(x)]
        out.append(
            {
                "line": name, "labelled": k, "x": float(np.median(finite_x)) if finite_x else math.nan,
                "metric": metric, "n": len(v), "mean": float(v.mean()),
                "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan, "ci_low": low, "ci_high": high,
                "n_matched": len(delta), "delta": float(delta.mean()) if len(delta) else math.nan,
                "delta_low": d_low, "delta_high": d_high, "share": share, "share_low": s_low, "share_high": s_high,
            }
        )  # fmt: skip
    return out


def _share(
    all_labelled: np.ndarray, labelled: np.ndarray, confidence: float, n_resamples: int, seed: int
) -> tuple[float, float, float]:
    """mean(labelled) / mean(all_labelled) over matched repeats, with a bootstrap interval that resamples the
    repeats together (BCa, percentile where BCa is undefined; none from one repeat)."""
    from scipy.stats import bootstrap

    if all_labelled.mean() <= 0:
        return math.nan, math.nan, math.nan
    share = float(labelled.mean() / all_labelled.mean())
    if len(labelled) < 2:
        return share, math.nan, math.nan
    if np.ptp(labelled / np.where(all_labelled == 0, np.nan, all_labelled)) == 0:
        return share, share, share

    def ratio(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return b.mean(axis=axis) / a.mean(axis=axis)

    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = bootstrap(
                (all_labelled, labelled), ratio, paired=True, confidence_level=confidence, n_resamples=n_resamples,
                method=method, rng=np.random.default_rng(seed),
            )  # fmt: skip
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return share, low, high
    return share, math.nan, math.nan


# ------------------------------------------------------------------------------------------ display


def curve_rows(curve: Curve, metric: str | None = None, digits: int = 3) -> pd.DataFrame:
    """The curve as a table: per line and labelled count, IoU mean ± std [95 % CI], Δ against all labelled
    [95 % CI] and the share of the all-labelled IoU [95 % CI]; `metric` defaults to the dataset's own."""
    metric = metric or curve.metrics[0]
    rows = []
    for r in curve.points[curve.points["metric"] == metric].to_dict("records"):
        count = f"{r['x']:g}" if math.isfinite(r["x"]) else "?"
        mean = f"{r['mean']:.{digits}f}" + (f" ± {r['std']:.{digits}f}" if math.isfinite(r["std"]) else "")
        rows.append(
            {
                "line": r["line"],
                "labelled": f"all ({count})" if r["labelled"] == ALL else count,
                "n": r["n"],
                f"{metric} [95 % CI]": mean + _interval(r["ci_low"], r["ci_high"], f".{digits}f"),
                "Δ vs all [95 % CI]": _versus_all(r, r["delta"], "delta", f"+.{digits}f", 1.0),
                "% of all [95 % CI]": _versus_all(r, r["share"], "share", ".0f", 100.0, " %"),
            }
        )
    return pd.DataFrame(rows)


def _interval(low: float, high: float, fmt: str, scale: float = 1.0) -> str:
    return f" [{scale * low:{fmt}}, {scale * high:{fmt}}]" if math.isfinite(low) and math.isfinite(high) else ""


def _versus_all(r: dict, value: float, name: str, fmt: str, scale: float, unit: str = "") -> str:
    if r["labelled"] == ALL:
        return ""
    if not math.isfinite(value):
        return "no matched all-labelled run"
    return f"{scale * value:{fmt}}{unit}" + _interval(r[f"{name}_low"], r[f"{name}_high"], fmt, scale)


def curve_markdown(curve: Curve, digits: int = 3) -> str:
    """Every test metric's table of the curve, the dataset's own first."""
    parts = []
    for metric in curve.metrics:
        rows = curve_rows(curve, metric, digits)
        parts += [f"{metric} against labelled {curve.dataset} images", "", markdown_table(rows.to_dict("records")), ""]
    return "\n".join(parts).rstrip()
