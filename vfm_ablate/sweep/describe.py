"""The `--dry-run` text: trial counts, what was collapsed and why, one row per trial with its resources."""

from __future__ import annotations

from ..text_tables import format_table
from .plan import SweepPlan
from .readiness import sweep_readiness
from .spec import SweepSpec


def describe_plan(sweep: SweepSpec, the_plan: SweepPlan) -> str:
    """The dry-run report: counts, what was collapsed, and one row per trial with its resources."""
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
    rows = []
    for t in the_plan.trials:
        row = {**t.label(), "cpu": f"{t.resources.cpu:g}", "gpu": f"{t.resources.gpu:g}"}
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
    lines.append(sweep_readiness(sweep, the_plan.trials).format())
    return "\n".join(lines)
