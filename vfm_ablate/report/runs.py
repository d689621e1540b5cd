"""Read a sweep's trial runs back from MLflow: one row per run with its status, ids, params, final metrics and its
settings as a typed `TrialSpec` (column `spec`): the rules of the report (what applies, the alignment label) are
TrialSpec methods, never re-derived from MLflow's flat strings."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..config import TrialSpec
from ..errors import VfmAblateError
from ..tracking.store import search_all_runs, sqlite_path, tracking_client
from ..tracking.tags import (
    ERROR_TAG,
    EXECUTION_TAG,
    ROLE_TRIAL,
    SPEC_TAG,
    STOPPED_BY_TAG,
    SWEEP_ID_TAG,
    SWEEP_NAME_TAG,
    TRIAL_ID_TAG,
    runs_filter,
)
from ..validation import suggest


def load_runs(
    tracking_uri: str, experiment: str, sweep_id: str | None = None, execution_id: str | None = None
) -> pd.DataFrame:
    """One row per trial run of `experiment` (optionally of one sweep id or one execution): run_id, status
    (MLflow's, or STOPPED for a run the search's scheduler stopped), trial/sweep/execution ids, `params.<key>`,
    `metrics.<key>`. Deleted (superseded) runs are not read."""
    db = sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        raise VfmAblateError(f"no MLflow database at {db} (tracking URI {tracking_uri}); pass --tracking-uri")
    client = tracking_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = [e.name for e in client.search_experiments()]
        raise VfmAblateError(suggest(experiment, names, "MLflow experiment", tracking_uri))
    filt = runs_filter(ROLE_TRIAL, sweep_id=sweep_id or None, execution_id=execution_id or None)
    rows = []
    for run in search_all_runs(client, found.experiment_id, filt):
        tags = run.data.tags
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            # a run the search's scheduler stopped (ASHA) is its own status, not a person's KILLED
            "status": "STOPPED" if tags.get(STOPPED_BY_TAG) else run.info.status,
            "start_time": run.info.start_time,
            "end_time": run.info.end_time,
            "trial_id": tags.get(TRIAL_ID_TAG, ""),
            "sweep_id": tags.get(SWEEP_ID_TAG, ""),
            "execution_id": tags.get(EXECUTION_TAG, ""),
            "sweep_name": tags.get(SWEEP_NAME_TAG, ""),
            "error": tags.get(ERROR_TAG, ""),
        }
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        row["spec"] = logged_spec(tags.get(SPEC_TAG), run.data.params, run.info.run_id)
        rows.append(row)
    base = ["run_id", "run_name", "status", "start_time", "end_time", "trial_id", "sweep_id", "execution_id"]
    base += ["sweep_name", "error", "spec"]
    df = pd.DataFrame(rows, columns=None if rows else base)
    extra = sorted(c for c in df.columns if c not in base)
    return df[base + extra].reset_index(drop=True)


def logged_spec(spec_json: str | None, params: dict[str, str], run_id: str) -> TrialSpec:
    """A run's TrialSpec: the JSON it logged, or (runs of versions that did not log it) its flat params."""
    from pydantic import ValidationError

    if spec_json:
        try:
            return TrialSpec.model_validate_json(spec_json)
        except ValidationError:
            pass  # a spec of another version: its flat params below say the same in a form that tolerates that
    try:
        return TrialSpec.from_flat_params(params, f"MLflow run {run_id} params")
    except VfmAblateError as err:
        raise VfmAblateError(f"run {run_id}: its settings cannot be read back: {err}") from None


def run_specs(runs: pd.DataFrame) -> pd.Series:
    """Each run's TrialSpec: the `spec` column `load_runs` reads, else (tables made by hand) from its params."""
    if "spec" in runs:
        return runs["spec"]
    specs = []
    for idx in runs.index:
        params = {c[len("params.") :]: runs.at[idx, c] for c in runs.columns if c.startswith("params.")}
        params = {k: "" if v is None or (isinstance(v, float) and v != v) else str(v) for k, v in params.items()}
        specs.append(logged_spec(None, params, str(runs.at[idx, "run_id"]) if "run_id" in runs else str(idx)))
    return pd.Series(specs, index=runs.index, dtype=object)
