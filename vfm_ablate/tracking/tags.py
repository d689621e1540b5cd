"""The MLflow tag names vfm-ablate writes and the run filters that read them back: the contract between the runs a
sweep logs, the report, the UI's saved views and the cost model's epoch counts."""

from __future__ import annotations

from .store import check_id, quote

SWEEP_ID_TAG = "vfm.sweep_id"  # content hash of the sweep (name, trial ids, search settings)
EXECUTION_TAG = "vfm.execution_id"  # one execution of a sweep: from its first start to its last resume
TRIAL_ID_TAG = "vfm.trial_id"
SWEEP_NAME_TAG = "vfm.sweep_name"
ROLE_TAG = "vfm.role"  # "sweep" (the execution's summary run) or "trial"
LAUNCH_TAG = "vfm.launch"  # sweep run: launches so far; trial run: the launch that opened it last
SWEEP_RUN_TAG = "vfm.sweep_run_id"  # trial run: its execution's summary run
ATTEMPT_TAG = "vfm.attempt"  # trial run: how many times the trial has been opened (retries, resumes)
SUPERSEDED_TAG = "vfm.superseded_by"  # a trial run replaced by a later attempt's run (then deleted)
ERROR_TAG = "vfm.error"
RETIRED_TAG = "vfm.superseded"  # a deleted run of a trial that started over (its inputs changed): why, when
SPEC_TAG = "vfm.trial_spec"  # trial run: its TrialSpec as JSON (what the report reads back)
INPUTS_ID_TAG = "vfm.inputs_id"  # trial run: the identity of the entries and files it read
NODE_ID_TAG = "vfm.node_id"  # trial run: the Ray node it ran on
OUTPUTS_TAG = "vfm.outputs"  # trial run: where its output folder lies in the sweep's storage
ALIGNMENT_TAG = "vfm.alignment"  # trial run: its alignment method as one label (`none`, `histogram+standardise`)
STOPPED_BY_TAG = "vfm.stopped_by"  # trial run stopped by the search's scheduler: `ASHA at epoch 3` (status KILLED)
INTERRUPTED_TAG = "vfm.interrupted"  # trial run a person's interruption ended: `at epoch 2` (status KILLED)

ROLE_SWEEP = "sweep"
ROLE_TRIAL = "trial"


def runs_filter(
    role: str, *, sweep_id: str | None = None, execution_id: str | None = None, trial_id: str | None = None
) -> str:
    """The MLflow filter of a role's runs, optionally of one sweep id, one execution and one trial (the UI view's
    too)."""
    parts = []
    if execution_id is not None:
        parts.append(f"tags.`{EXECUTION_TAG}` = {quote(check_id(execution_id, 'execution id'))}")
    parts.append(f"tags.`{ROLE_TAG}` = {quote(role)}")
    if sweep_id is not None:
        parts.append(f"tags.`{SWEEP_ID_TAG}` = {quote(check_id(sweep_id, 'sweep id'))}")
    if trial_id is not None:
        parts.append(f"tags.`{TRIAL_ID_TAG}` = {quote(check_id(trial_id, 'trial id'))}")
    return " and ".join(parts)
