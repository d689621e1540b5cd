"""Is a difference between two settings more than seed noise? Paired comparisons over matched repeats.

`compare_settings(runs, axis, a, b)` pairs every finished run with `axis = a` with the run with `axis = b` that has
the same seed and split seed and agrees on every other setting that applies to both (a setting that cannot change
one of the two trials, e.g. `lora.rank` of a frozen trial or `data.target` of an unaligned one, is not compared:
`config.inapplicable_settings`). Per group of pairs that share their other settings and per metric:
Δ = b − a for each pair, its mean, and a 95 % bootstrap confidence interval of that mean (`scipy.stats.bootstrap`,
BCa). An interval that includes 0 is "within seed noise".

`axis` is any dotted setting (`regime`, `lora.rank`, `data.sampling`, `alignment.loss`, ...) or `method`: the
alignment method as one label (`config.alignment_label`) built from every `alignment.*` setting.
`transfer_table(runs)` compares every alignment method with `none`: source → target IoU per test dataset and the
feature-gap diagnostics (FD, MMD, linear probe).
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from typing import Any

import numpy as np
import pandas as pd

from ..errors import VfmAblateError
from ..metric_names import IOU, MACRO_IOU, POOLED_IOU
from ..validation import suggest
from .runs import run_specs
from .tables import NON_CONDITION_PARAMS, NON_CONDITION_PREFIXES, REPEAT_PARAMS, covered, unset_value

METHOD = "method"  # the derived axis: the alignment method's label
NOISE = "within seed noise"
BEYOND = "beyond seed noise"
DIAG_MEASURES = ("fd", "mmd", "probe_acc")
TRANSFER_LABEL = ("backbone", "regime", "data.train")  # shown in the transfer table even when constant
RESULT_COLUMNS = [
    "axis", "a", "b", "group", "metric", "n", "mean_a", "std_a", "mean_b", "std_b", "delta", "ci_low", "ci_high",
    "verdict",
]  # fmt: skip


def compare_settings(
    runs: pd.DataFrame,
    axis: str,
    a: str,
    b: str,
    metrics: list[str] | None = None,
    *,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    label: tuple[str, ...] = (),
) -> pd.DataFrame:
    """One row per (group of matched pairs, metric): n pairs, means / stds of both sides over those pairs, mean Δ
    (b − a), its bootstrap interval and the verdict. `group` holds the other settings the pairs share (those that
    vary in the compared runs, and the `label` settings even when they do not); a group's own columns are
    `params.<key>`."""
    finished = finished_runs(runs)
    col = f"params.{axis}"
    if axis == METHOD and col not in finished:
        finished = with_method(finished)
    if col not in finished:
        known = [c[len("params.") :] for c in finished if c.startswith("params.")]
        raise VfmAblateError(suggest(axis, known, "setting to compare"))
    if axis != METHOD:  # a frozen run's lora.rank (a default it never used) is no value of the axis
        applies = [not covered(axis, spec.inapplicable_settings()) for spec in finished["spec"]]
        finished = finished[applies]
    values = finished[col].fillna(unset_value(axis)).astype(str)
    side_a, side_b = finished[values == a], finished[values == b]
    for value, side in ((a, side_a), (b, side_b)):
        if side.empty:
            seen = ", ".join(sorted(set(values)))
            raise VfmAblateError(f"no finished run has {axis} = {value!r} (values found: {seen})")
    metrics = metrics or default_metrics(pd.concat([side_a, side_b]))
    condition = varying_conditions(pd.concat([side_a, side_b]), axis, label)
    pairs = _matched_pairs(side_a, side_b, condition)
    rows = []
    for label, matched in pairs.items():
        group = dict(label)
        for metric in metrics:
            mcol = f"metrics.{metric}"
            got = [(ra[mcol], rb[mcol]) for ra, rb in matched if mcol in ra and mcol in rb]
            got = [(float(x), float(y)) for x, y in got if is_finite(x) and is_finite(y)]
            if not got:
                continue
            va, vb = np.array([x for x, _ in got]), np.array([y for _, y in got])
            deltas = vb - va
            low, high = bootstrap_interval(deltas, confidence, n_resamples, seed)
            rows.append(
                {
                    "axis": axis,
                    "a": a,
                    "b": b,
                    "group": ", ".join(f"{k}={v}" for k, v in label) or "(all)",
                    **{f"params.{k}": v for k, v in group.items()},
                    "metric": metric,
                    "n": len(deltas),
                    "mean_a": float(va.mean()),
                    "std_a": _std(va),
                    "mean_b": float(vb.mean()),
                    "std_b": _std(vb),
                    "delta": float(deltas.mean()),
                    "ci_low": low,
                    "ci_high": high,
                    "verdict": verdict(low, high),
                }
            )
    if not rows:
        raise VfmAblateError(
            f"no pair of finished runs with {axis} = {a!r} and {b!r} shares its seed, split seed and other settings "
            f"(compared settings: {', '.join(condition) or 'none'})"
        )
    frame = pd.DataFrame(rows)
    extra = sorted(c for c in frame.columns if c not in RESULT_COLUMNS)
    return frame[RESULT_COLUMNS[:4] + extra + RESULT_COLUMNS[4:]]


def transfer_table(
    runs: pd.DataFrame, baseline: str = "none", *, confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0
) -> pd.DataFrame:
    """Every alignment method against `baseline` (`none`): compare_settings over the `method` axis for each method,
    with the IoU of every test dataset and the feature-gap diagnostics."""
    finished = with_method(finished_runs(runs))
    methods = sorted(set(finished[f"params.{METHOD}"]) - {baseline})
    if baseline not in set(finished[f"params.{METHOD}"]):
        raise VfmAblateError(f"no finished run uses alignment method '{baseline}' to compare against")
    if not methods:
        raise VfmAblateError(f"every finished run uses alignment method '{baseline}': nothing to compare")
    frames = [
        compare_settings(
            finished,
            METHOD,
            baseline,
            m,
            confidence=confidence,
            n_resamples=n_resamples,
            seed=seed,
            label=TRANSFER_LABEL,
        )
        for m in methods
    ]
    return pd.concat(frames, ignore_index=True)


def with_method(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with `params.method`: the alignment method of each run as one label (`none` without alignment)."""
    out = runs.copy()
    out[f"params.{METHOD}"] = [spec.alignment.label() for spec in run_specs(out)]
    return out


def default_metrics(runs: pd.DataFrame) -> list[str]:
    """Every test IoU (`iou_fg/<dataset>`, macro, pooled) and feature-gap diagnostic (FD, MMD, probe accuracy) that
    the runs logged."""
    found = [c[len("metrics.") :] for c in runs.columns if c.startswith("metrics.") and runs[c].notna().any()]
    iou = sorted(m for m in found if m.startswith(f"{IOU}/") or m in (MACRO_IOU, POOLED_IOU))
    diag = sorted(m for m in found if m.startswith("diag/") and m.split("/")[2] in DIAG_MEASURES)
    return iou + diag


def bootstrap_interval(deltas: np.ndarray, confidence: float, n_resamples: int, seed: int) -> tuple[float, float]:
    """The `confidence` bootstrap interval (BCa, percentile where BCa is undefined) of the mean of `deltas`; equal
    deltas give a zero-width interval, a single one none (NaN)."""
    from scipy.stats import bootstrap

    d = np.asarray(deltas, dtype=np.float64)
    if len(d) < 2:
        return math.nan, math.nan
    if np.ptp(d) == 0:
        return float(d[0]), float(d[0])
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa on a handful of repeats may be degenerate: then percentile
            res = bootstrap(
                (d,),
                np.mean,
                confidence_level=confidence,
                n_resamples=n_resamples,
                method=method,
                rng=np.random.default_rng(seed),
            )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return low, high
    return math.nan, math.nan


def verdict(low: float, high: float) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "one pair: no interval"
    return NOISE if low <= 0.0 <= high else BEYOND


def alignment_methods(runs: pd.DataFrame) -> list[str]:
    """The alignment methods the finished runs used (labels, `none` included)."""
    try:
        finished = finished_runs(runs)
    except VfmAblateError:  # nothing finished
        return []
    return sorted(set(with_method(finished)[f"params.{METHOD}"]))


# --------------------------------------------------------------------------------------------- matching


def finished_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """FINISHED runs, one per trial id (the latest), with their TrialSpec (`spec`) and data.test made explicit (its
    test datasets: train + target when unset)."""
    if runs.empty:
        raise VfmAblateError("no trial runs to compare (is this the right experiment / tracking URI?)")
    done = runs[runs["status"] == "FINISHED"].sort_values("start_time", kind="stable")
    has_id = done["trial_id"].astype(str) != ""
    done = pd.concat([done[has_id].drop_duplicates("trial_id", keep="last"), done[~has_id]]).copy()
    if done.empty:
        raise VfmAblateError(f"none of the {len(runs)} trial runs finished: nothing to compare")
    done["spec"] = run_specs(done)
    if "params.data.test" in done:
        done["params.data.test"] = [",".join(spec.data.test_datasets) for spec in done["spec"]]
    return done


def varying_conditions(runs: pd.DataFrame, axis: str, label: tuple[str, ...] = ()) -> list[str]:
    """The settings besides the axis and the seeds that take more than one value among the compared runs (and the
    `label` ones)."""
    out = []
    for col in runs.columns:
        if not col.startswith("params."):
            continue
        key = col[len("params.") :]
        if key == axis or key in REPEAT_PARAMS or key in NON_CONDITION_PARAMS or key.startswith(NON_CONDITION_PREFIXES):
            continue
        if axis == METHOD and key.startswith("alignment."):
            continue  # the method is made of these
        if key in label or runs[col].fillna("").astype(str).nunique() > 1:
            out.append(key)
    return sorted(out)


def _matched_pairs(
    side_a: pd.DataFrame, side_b: pd.DataFrame, condition: list[str]
) -> dict[tuple[tuple[str, str], ...], list[tuple[pd.Series, pd.Series]]]:
    """Pairs (a run, b run) with the same seed and split seed that agree on every varying setting applying to both,
    grouped by the values of the varying settings (taken from the side where each applies)."""
    by_seed: dict[tuple[str, str], list[tuple[pd.Series, list[str]]]] = defaultdict(list)
    for _, rb in side_b.iterrows():
        by_seed[_seeds(rb)].append((rb, rb["spec"].inapplicable_settings()))
    groups: dict[tuple[tuple[str, str], ...], list[tuple[pd.Series, pd.Series]]] = defaultdict(list)
    seen: dict[tuple[tuple[str, str], ...], set[tuple[str, str]]] = defaultdict(set)
    for _, ra in side_a.iterrows():
        skip_a = ra["spec"].inapplicable_settings()
        for rb, skip_b in by_seed.get(_seeds(ra), []):
            label = []
            for key in condition:
                on_a, on_b = not covered(key, skip_a), not covered(key, skip_b)
                va, vb = param_value(ra, key), param_value(rb, key)
                if on_a and on_b and va != vb:
                    break
                if on_a or on_b:
                    label.append((key, va if on_a else vb))
            else:
                key_ = tuple(label)
                if _seeds(ra) in seen[key_]:
                    raise VfmAblateError(
                        f"runs {ra['run_id']} and {rb['run_id']} match more than one run of the same seed in group "
                        f"{dict(key_)}: they differ in a setting the comparison cannot tell apart"
                    )
                seen[key_].add(_seeds(ra))
                groups[key_].append((ra, rb))
    return dict(groups)


def _seeds(row: pd.Series) -> tuple[str, str]:
    return param_value(row, "seed"), param_value(row, "split_seed")


def param_value(row: pd.Series, key: str) -> str:
    v = row.get(f"params.{key}", None)
    return unset_value(key) if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)



def is_finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _std(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan
