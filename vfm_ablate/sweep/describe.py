"""The `--dry-run` text: trial counts, what was collapsed and why, one row per trial with its resources; with a
calibration file, the cost estimate (`describe_estimate`)."""

from __future__ import annotations

from ..text_tables import format_table
from .cost.estimate import SweepEstimate, TrialEstimate
from .inputs import sweep_readiness
from .plan import SweepPlan


def describe_plan(the_plan: SweepPlan) -> str:
    """The dry-run report: counts, what was collapsed, and one row per trial with its resources."""
    sweep = the_plan.sweep
    lines = [f"sweep '{sweep.name}' ({sweep.source})"]
    n = the_plan.num_trials
    if sweep.search is None:
        lines.append(f"{n} trials ({the_plan.grid_points} combinations, {the_plan.collapsed} collapsed as duplicates)")
    else:
        total = sum(sweep.search.num_samples if t.search_space else 1 for t in the_plan.trials)
        lines.append(
            f"{n} grid points ({the_plan.grid_points} combinations, {the_plan.collapsed} collapsed); "
            f"search: {sweep.search.num_samples} Optuna samples per grid point -> {total} trials; "
            f"metric {sweep.search.metric} ({sweep.search.mode})"
            + (f", ASHA grace {sweep.search.asha.grace_period}" if sweep.search.asha.enabled else "")
        )
    for reason, count in sorted(the_plan.collapse_reasons.items()):
        lines.append(f"  collapsed: {reason} (applied to {count} combinations)")
    if the_plan.labels.common:
        lines.append(f"same for every trial: {the_plan.labels.common}")
    rows = []
    for t in the_plan.trials:
        shown = {c: t.label.columns[c] for c in the_plan.labels.shown}  # the settings that tell trials apart
        row = {**shown, "cpu": f"{t.resources.cpu:g}", "gpu": f"{t.resources.gpu:g}"}
        if sweep.search is not None:
            row["search"] = ", ".join(f"{k}~{d.describe()}" for k, d in t.search_space.items()) or "(none: 1 trial)"
        rows.append(row)
    lines.append(format_table(rows))
    shapes: dict[str, int] = {}
    for t in the_plan.trials:
        shapes[t.resources.describe()] = shapes.get(t.resources.describe(), 0) + 1
    lines.append(
        "resources per trial: "
        + "; ".join(f"{n} x ({shape})" for shape, n in shapes.items())
        + " (GPU asks become 0 on a cluster without GPUs); max_concurrent_trials: "
        + str(sweep.run.max_concurrent_trials or "as resources allow")
    )
    lines.append(sweep_readiness(the_plan).format())
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """12.3 s, 4.5 min, 2.31 h: a time a person reads at a glance."""
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def describe_estimate(est: SweepEstimate, calibration_path: str = "") -> str:
    """The `--dry-run --calibration` section: cost per trial (grouped over repeats), totals, makespan."""
    cal = est.calibration
    sources = sorted({m.source for m in cal.measurements})
    basis = " + ".join(
        "measured" if s == "measured" else f"FLOP counts at {cal.settings.assumed_tflops:g} TFLOP/s" for s in sources
    )
    lines = [
        "",
        f"estimate from {calibration_path or 'the calibration'}: {cal.device.kind} '{cal.device.name}', "
        f"torch {cal.torch_version}, {cal.created[:10]} ({basis or 'no measurements'})",
    ]
    groups: dict[tuple, list[TrialEstimate]] = {}
    for t in est.trials:
        lab = t.trial.label.columns
        groups.setdefault((lab["backbone"], lab["regime"], lab["rank"], lab["train"], lab["sampling"]), []).append(t)
    rows = []
    for (backbone, regime, rank, train, sampling), ts in groups.items():
        first = ts[0]
        secs = [t.seconds for t in ts if t.seconds is not None]
        rows.append(
            {
                "backbone": backbone,
                "regime": regime,
                "rank": rank,
                "train": train,
                "sampling": sampling,
                "trials": str(len(ts)) + (f" x {first.samples}" if first.samples > 1 else ""),
                "epochs": f"{first.epochs:g} ({first.epochs_source})",
                "per trial": duration(sum(secs) / len(secs)) if secs else "not calibrated",
                "extraction": duration(sum(t.extraction_s for t in ts)) if regime == "frozen" else "-",
                "GPU share": f"{first.gpu:g} ({first.share_source})",
                "per GPU": _fits(first),
                "peak MB": f"{first.peak_memory_mb:.0f}" if first.peak_memory_mb is not None else "-",
                "GPU-h": f"{sum(t.gpu_hours for t in ts):.2f}",
            }
        )
    lines.append(format_table(rows))
    missing = sorted({m for t in est.trials for m in t.missing})
    if missing:
        lines.append(
            f"not calibrated ({len(missing)} configurations; run `vfm-ablate calibrate` with this sweep file): "
            + "; ".join(missing[:6])
            + (" ..." if len(missing) > 6 else "")
        )
    lines.append(
        f"total: {len(est.trials)} trials, {est.trial_hours:.2f} trial-hours, {est.gpu_hours:.2f} GPU-hours "
        "(a trial's hours x the GPU share it holds)"
        + ("" if est.complete else " -- trials without a calibration counted as 0")
    )
    epochs_used = sorted({t.epochs_source for t in est.trials})
    if "assumed" in epochs_used:
        assumed = next(t.epochs for t in est.trials if t.epochs_source == "assumed")
        lines.append(
            f"epochs: {assumed:g} per trial assumed (early stopping; set --epochs N) where no finished trial of the "
            "same backbone x regime x data is in MLflow" + (f"; {est.epoch_note}" if est.epoch_note else "")
        )
    elif est.epoch_note and "max_epochs" not in epochs_used:
        lines.append(f"epochs: {est.epoch_note}")
    if est.makespan_s is not None:
        wall = est.launch_s + est.makespan_s
        lines.append(
            f"makespan on {est.cluster}: {duration(wall)} (trials {duration(est.makespan_s)} packed in sweep "
            f"order + start-up {duration(est.launch_s)}"
            + (f"; at most {est.max_concurrent} at once" if est.max_concurrent else "")
            + ")"
        )
        bound = est.compute_bound_s
        if bound is not None and bound > est.makespan_s * 1.05:
            lines.append(
                f"  up to {duration(est.launch_s + bound)} if trials sharing a GPU slow each other down (each was "
                "timed alone; compute-bound trials gain nothing from sharing)"
            )
    elif est.cluster:
        lines.append(f"makespan: {est.cluster}")
    else:
        lines.append("makespan: give --gpus N or --cluster cluster.yaml")
    if any(t.share_source == "entry" for t in est.trials) and any(t.gpu > 0 for t in est.trials):
        lines.append("GPU share (entry): the backbone entry's guess, as no accelerator memory was measured for it")
    return "\n".join(lines)


def _fits(t: TrialEstimate) -> str:
    if t.gpu <= 0:
        return "-"
    if t.gpu > 1:
        return f"needs {t.gpu:g}"
    return str(int(round(1 / t.gpu)))
