"""Epochs per trial for the estimate: the sweep's own finished trials in MLflow where there are any (median
epochs run, i.e. to early stopping, per backbone x regime x train data), else a stated assumption.

Read-only: MLflow is only searched (`report.runs.load_runs`); a store that does not exist yet is not created.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field

from ...config import TrialSpec

DEFAULT_ASSUMED_EPOCHS = 100  # the study: <= 1000 epochs, patience 20; its LoRA runs stopped after ~100

GroupKey = tuple[str, str, str]  # backbone, regime, train datasets joined with "+"


def group_of(spec: TrialSpec) -> GroupKey:
    return (spec.backbone, spec.regime, "+".join(spec.data.train))


@dataclass(frozen=True)
class EpochModel:
    assumed: int = DEFAULT_ASSUMED_EPOCHS
    observed: dict[GroupKey, list[float]] = field(default_factory=dict)  # epochs_run of finished trials
    note: str = ""  # why nothing was observed (no store, no experiment), shown in the estimate

    def epochs_for(self, spec: TrialSpec) -> tuple[float, str]:
        """(epochs, where the number comes from) for one trial, never above its max_epochs."""
        runs = self.observed.get(group_of(spec))
        if runs:
            median = statistics.median(runs)
            return min(median, spec.optim.max_epochs), f"median of {len(runs)} finished"
        if spec.optim.max_epochs <= self.assumed:
            return float(spec.optim.max_epochs), "max_epochs"
        return float(self.assumed), "assumed"


def observed_epochs(tracking_uri: str, experiment: str, assumed: int = DEFAULT_ASSUMED_EPOCHS) -> EpochModel:
    """Median-ready epochs_run of the experiment's FINISHED trial runs, grouped; never fails the dry run."""
    from ...errors import VfmAblateError
    from ...report.runs import load_runs
    from ...tracking.store import sqlite_path

    db = sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        return EpochModel(assumed, {}, f"no MLflow store at {db} yet")

    # a dry run must not hang on an unreachable tracking server
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        runs = load_runs(tracking_uri, experiment)
    except VfmAblateError as err:
        return EpochModel(assumed, {}, f"no finished trials read from MLflow ({err})")
    except Exception as err:  # a server that does not answer: estimate from the assumption, say why
        return EpochModel(assumed, {}, f"MLflow at {tracking_uri} not readable ({type(err).__name__})")
    needed = ["status", "params.backbone", "params.regime", "params.data.train", "metrics.epochs_run"]
    if runs.empty or any(c not in runs.columns for c in needed):
        return EpochModel(assumed, {}, f"no finished trials in MLflow experiment '{experiment}'")
    observed: dict[GroupKey, list[float]] = {}
    for _, row in runs[runs["status"] == "FINISHED"].iterrows():
        epochs = row["metrics.epochs_run"]
        if epochs != epochs:  # NaN: a run without the metric
            continue
        key = (str(row["params.backbone"]), str(row["params.regime"]), str(row["params.data.train"]).replace(",", "+"))
        observed.setdefault(key, []).append(float(epochs))
    note = "" if observed else f"no finished trials in MLflow experiment '{experiment}'"
    return EpochModel(assumed, observed, note)
