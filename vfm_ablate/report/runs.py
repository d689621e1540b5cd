"""Read a sweep's trial runs back from MLflow: one row per run with its status, ids, params and final metrics."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..errors import VfmAblateError
from ..tracking.runs import ERROR_TAG, EXECUTION_TAG, ROLE_TAG, SWEEP_ID_TAG, SWEEP_NAME_TAG, TRIAL_ID_TAG
from ..tracking.store import check_id, search_all_runs, sqlite_path, tracking_client
from ..validation import suggest


def load_runs(
    tracking_uri: str, experiment: str, sweep_id: str | None = None, execution_id: str | None = None
) -> pd.DataFrame:
    """One row per trial run of `experiment` (optionally of one sweep id or one execution): run_id, status,
    trial/sweep/execution ids, `params.<key>`, `metrics.<key>`. Deleted (superseded) runs are not read."""
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
    if execution_id:
        filt += f" and tags.`{EXECUTION_TAG}` = '{check_id(execution_id, 'execution id')}'"
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
            "execution_id": tags.get(EXECUTION_TAG, ""),
            "sweep_name": tags.get(SWEEP_NAME_TAG, ""),
            "error": tags.get(ERROR_TAG, ""),
        }
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        rows.append(row)
    base = ["run_id", "run_name", "status", "start_time", "end_time", "trial_id", "sweep_id", "execution_id"]
    base += ["sweep_name", "error"]
    df = pd.DataFrame(rows, columns=None if rows else base)
    extra = sorted(c for c in df.columns if c not in base)
    return df[base + extra].reset_index(drop=True)
