"""A resume against changed inputs: refuse to mix old and new results, or (`--rerun-changed`) start exactly the
affected trials over, keeping what they computed before (see identity.py for what an input's identity is)."""

from __future__ import annotations

import time
from typing import Any, TextIO

from ...config import TrialSpec
from ...errors import ConfigError
from ..plan import SweepPlan
from ..store import TrialStore
from .identity import InputIdentities, changed_entries, stale_trials, uses_any


def check_unchanged_inputs(
    store: TrialStore,
    the_plan: SweepPlan,
    identities: InputIdentities,
    old_manifest: dict[str, Any] | None,
    rerun_changed: bool,
    out: TextIO,
) -> tuple[dict[tuple[str, str], str], list[str]]:
    """(changed entries, trials to start over) for a resume of the sweep whose manifest is `old_manifest`; refuses
    (ConfigError naming the entries and trials) when trials were made from other inputs, unless `rerun_changed`."""
    old = old_manifest
    if old is None:
        return {}, []
    if "inputs" not in old:
        print(f"note: {store.root} records no input identities (an older version wrote it): not checked", file=out)
    changed = changed_entries(old.get("inputs"), identities)
    valid = {identities.trial_inputs_id(t.spec) for t in the_plan.trials}
    stale = stale_trials(store.recorded_inputs(), valid)
    described = "".join(f"\n  - {kind} '{name}': {what}" for (kind, name), what in sorted(changed.items()))
    if not stale:
        if changed:
            print(f"note: entries changed since the sweep started; no trial has read them yet:{described}", file=out)
        return changed, []
    if not rerun_changed:
        shown = ", ".join(stale[:8]) + (f" (+{len(stale) - 8} more)" if len(stale) > 8 else "")
        raise ConfigError(
            f"{the_plan.sweep.source}: {len(stale)} trial(s) in {store.root} were trained (or started) on other "
            f"inputs than the entries now say: {shown}."
            + (f" Changed since the sweep started:{described}" if changed else "")
            + "\n--resume does not mix their results with new ones. Re-run those trials with --resume "
            "--rerun-changed (their old records move to trials/<id>/superseded/, their MLflow runs are deleted, "
            "restorable), or run the changed sweep under another name or --storage-path."
        )
    return changed, stale


def start_over(
    store: TrialStore,
    the_plan: SweepPlan,
    stale: list[str],
    changed: dict[tuple[str, str], str],
    experiments: dict[str, TrialSpec | None],
    uri: str | None,
    execution: str,
    out: TextIO,
) -> None:
    """`--rerun-changed`: the stale trials' records move aside, and so do the Ray experiments holding them (Ray
    never runs a trial it saw finish again): `experiments` maps each experiment folder to the grid point it holds
    (search mode) or None (grid mode: all trials); only those reading a changed entry move. Their unchanged
    neighbours then report their stored results; the stale trials' MLflow runs are retired."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for tid in stale:
        store.supersede(tid, stamp)
    entries = set(changed)
    for name, point in experiments.items():
        if point is None or not entries or uses_any(point, entries):
            store.move(name, f"superseded/{stamp}/{name}")
    retired = 0
    if uri is not None:
        from ...tracking.runs import retire_trial_runs

        experiment = the_plan.sweep.experiment_name
        retired = retire_trial_runs(uri, experiment, execution, stale, f"inputs changed; re-run {stamp}")
    print(
        f"re-running {len(stale)} trial(s) whose inputs changed; their old records are in "
        f"{store.root}/trials/<id>/superseded/{stamp}/"
        + (f", their {retired} MLflow run(s) deleted (restorable: mlflow runs restore)" if retired else ""),
        file=out,
        flush=True,
    )
