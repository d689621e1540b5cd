"""MLflow runs of a sweep: one top-level run per trial and one sweep summary run, all keyed by the sweep's
*execution* (the id stored in the sweep's manifest when it was first started), so that:

- every trial of an execution is a row of the experiment's run list, across launches (no nesting: MLflow's UI
  folds child runs under their parent and leaves them out of its charts);
- `--resume` and Ray's retries find the execution's own runs again, never duplicating them;
- a fresh start of the same sweep (another storage path, same store) is another execution and never writes into
  an earlier execution's runs, even when its trials have the same content-hash ids;
- a trial's learning curve comes from one attempt: an attempt that would log epochs a killed attempt already
  logged moves the trial to a new run (the older one is tagged `vfm.superseded_by` and deleted, restorable).

The tag names (tracking/tags.py) are the contract the report and the UI views read back.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path
from typing import Any

from ..errors import VfmAblateError
from .store import (
    check_id,
    check_status,
    ensure_experiment,
    log_metrics,
    log_params,
    retry_locked,
    search_all_runs,
    set_tags,
    sqlite_path,
    tracking_client,
)
from .tags import (
    ATTEMPT_TAG,
    ERROR_TAG,
    EXECUTION_TAG,
    LAUNCH_TAG,
    RETIRED_TAG,
    ROLE_SWEEP,
    ROLE_TAG,
    ROLE_TRIAL,
    SUPERSEDED_TAG,
    SWEEP_ID_TAG,
    SWEEP_NAME_TAG,
    SWEEP_RUN_TAG,
    TRIAL_ID_TAG,
    runs_filter,
)

_log = logging.getLogger(__name__)

EPOCH_METRICS = ("train_loss", "val_loss", "best_val_loss", "epoch_time_s", "epoch")  # step = epoch


class SweepTracker:
    """Driver side of one execution of a sweep: its summary run, reopened by every launch."""

    def __init__(self, tracking_uri: str, experiment: str, sweep_name: str, sweep_id: str, execution_id: str):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.sweep_name = sweep_name
        self.sweep_id = check_id(sweep_id, "sweep id")
        self.execution_id = check_id(execution_id, "execution id")
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.launch = 0

    @property
    def _client(self) -> Any:
        return tracking_client(self.tracking_uri)

    def start(self, params: dict[str, str], tags: dict[str, str] | None = None) -> str:
        """Open this execution's summary run (created by its first launch) and count the launch."""
        client = self._client
        self.experiment_id = ensure_experiment(client, self.experiment, self.tracking_uri)
        found = search_all_runs(
            client,
            self.experiment_id,
            runs_filter(ROLE_SWEEP, execution_id=self.execution_id),
            order_by=["attributes.start_time ASC"],
        )
        if found:
            run = found[0]
            self.run_id = run.info.run_id
            if run.info.status == "RUNNING":
                self._end_stale_trials(client)
            self.launch = int(run.data.tags.get(LAUNCH_TAG, "0")) + 1
            retry_locked(lambda: client.update_run(self.run_id, status="RUNNING"), "re-open sweep run")
            logged = run.data.params
            log_params(client, self.run_id, {k: v for k, v in params.items() if k not in logged})
        else:
            self.launch = 1
            all_tags = {
                SWEEP_ID_TAG: self.sweep_id,
                EXECUTION_TAG: self.execution_id,
                SWEEP_NAME_TAG: self.sweep_name,
                ROLE_TAG: ROLE_SWEEP,
            }
            run = retry_locked(
                lambda: client.create_run(self.experiment_id, tags=all_tags, run_name=f"{self.sweep_name} · sweep"),
                "create sweep run",
            )
            self.run_id = run.info.run_id
            log_params(client, self.run_id, params)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        set_tags(
            client,
            self.run_id,
            {**(tags or {}), LAUNCH_TAG: str(self.launch), f"vfm.launch.{self.launch}.started": stamp},
        )
        return self.run_id

    def _end_stale_trials(self, client: Any) -> None:
        """The previous launch's driver was killed (its summary run is still RUNNING): its RUNNING trial runs are
        dead too. A launch of an execution only starts once the previous one is gone (they share the storage)."""
        _log.warning("sweep run of execution %s was left RUNNING (driver killed): ending its trials", self.execution_id)
        for run in self.running_trials():
            retry_locked(lambda: client.set_terminated(run.info.run_id, "KILLED"), "end stale trial run")

    def reconcile(self, finished: dict[str, str]) -> None:
        """Set the final status of trials whose run is still RUNNING (e.g. the trial process died before close())."""
        if not finished:
            return
        for status in finished.values():
            check_status(status)
        client = self._client
        for run in self.running_trials():
            trial_id = run.data.tags.get(TRIAL_ID_TAG)
            if trial_id in finished:
                retry_locked(lambda: client.set_terminated(run.info.run_id, finished[trial_id]), "reconcile")

    def tag_trials(self, tags: dict[str, dict[str, str]]) -> None:
        """Tags on this execution's runs of the given trials (trial id -> tags): how a trial ended when its run
        cannot say it (a scheduler's stop and a person's interruption both end a run KILLED)."""
        if not tags:
            return
        client = self._client
        if self.experiment_id is None:
            self.experiment_id = ensure_experiment(client, self.experiment, self.tracking_uri)
        for run in search_all_runs(client, self.experiment_id, runs_filter(ROLE_TRIAL, execution_id=self.execution_id)):
            wanted = tags.get(run.data.tags.get(TRIAL_ID_TAG, ""))
            if wanted:
                set_tags(client, run.info.run_id, wanted)

    def publish(self, metrics: dict[str, float], artifacts: str | Path | None = None) -> None:
        """The sweep's summary at the end of a launch: metrics at step = launch number, files as artifacts."""
        run_id = self._need_run("publish")
        log_metrics(self._client, run_id, metrics, step=self.launch)
        if artifacts is not None and Path(artifacts).is_dir():
            retry_locked(lambda: self._client.log_artifacts(run_id, str(artifacts)), "log sweep artifacts")

    def finish(self, status: str = "FINISHED") -> None:
        """End the launch: the execution's trial runs still RUNNING become KILLED, then the summary run gets
        `status`."""
        check_status(status)
        run_id = self._need_run("finish")
        client = self._client
        for run in self.running_trials():
            _log.warning(
                "trial %s still RUNNING at the end of the launch: marking it KILLED", run.data.tags.get(TRIAL_ID_TAG)
            )
            retry_locked(lambda: client.set_terminated(run.info.run_id, "KILLED"), "finish")
        set_tags(client, run_id, {f"vfm.launch.{self.launch}.status": status})
        retry_locked(lambda: client.set_terminated(run_id, status), "finish sweep run")

    def running_trials(self) -> list[Any]:
        if self.experiment_id is None:
            self.experiment_id = ensure_experiment(self._client, self.experiment, self.tracking_uri)
        return search_all_runs(
            self._client,
            self.experiment_id,
            runs_filter(ROLE_TRIAL, execution_id=self.execution_id) + " and attributes.status = 'RUNNING'",
        )

    def _need_run(self, what: str) -> str:
        if self.run_id is None:
            raise VfmAblateError(f"SweepTracker.{what}() called before start()")
        return self.run_id


# ----------------------------------------------------------------------------------------------- trial side


class TrialTracker:
    """Trial side: the trial's run, found again by (execution id, trial id) so retries and resumes never duplicate it.

    Holds only plain picklable values; the MLflow client comes from a per-process cache in the process that uses it.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        sweep_run_id: str | None,
        sweep_id: str,
        trial_id: str,
        execution_id: str,
        launch: int = 1,
    ):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.sweep_run_id = sweep_run_id
        self.sweep_id = check_id(sweep_id, "sweep id")
        self.trial_id = check_id(trial_id, "trial id")
        self.execution_id = check_id(execution_id, "execution id")
        self.launch = launch
        self.run_id: str | None = None
        self._experiment_id: str | None = None
        self._first_epoch_checked = False

    @property
    def _client(self) -> Any:
        return tracking_client(self.tracking_uri)

    def open(self, params: dict[str, str], tags: dict[str, str] | None = None, run_name: str | None = None) -> str:
        """Find or create the trial's run, mark it RUNNING, log the params it lacks; returns the run id."""
        self._check_store_reachable()
        client = self._client
        self._experiment_id = experiment_id = ensure_experiment(client, self.experiment, self.tracking_uri)
        existing = search_all_runs(
            client,
            experiment_id,
            runs_filter(ROLE_TRIAL, execution_id=self.execution_id, trial_id=self.trial_id),
            order_by=["attributes.start_time ASC"],
        )
        params = {str(k): str(v) for k, v in params.items()}
        self._first_epoch_checked = False
        if existing:
            if len(existing) > 1:
                _log.warning("trial %s has %d runs; re-using the oldest", self.trial_id, len(existing))
            run = existing[0]
            self.run_id = run.info.run_id
            attempt = int(run.data.tags.get(ATTEMPT_TAG, "1")) + 1
            logged = run.data.params
            conflicts = {k: (logged[k], v) for k, v in params.items() if k in logged and logged[k] != v}
            if conflicts:
                shown = "; ".join(f"{k}: logged {old!r}, now {new!r}" for k, (old, new) in sorted(conflicts.items()))
                raise VfmAblateError(
                    f"trial {self.trial_id} (run {self.run_id}) was re-opened with different params ({shown}); "
                    "a trial id must always describe the same settings"
                )
            retry_locked(lambda: client.update_run(self.run_id, status="RUNNING"), "re-open run")
            set_tags(client, self.run_id, {**(tags or {}), ATTEMPT_TAG: str(attempt), **self._launch_tags()})
            log_params(client, self.run_id, {k: v for k, v in params.items() if k not in logged})
        else:
            self.run_id = self._create_run(params, {**(tags or {}), ATTEMPT_TAG: "1"}, run_name)
        return self.run_id

    def _create_run(self, params: dict[str, str], tags: dict[str, str], run_name: str | None) -> str:
        client = self._client
        all_tags = {
            **tags,
            SWEEP_ID_TAG: self.sweep_id,
            EXECUTION_TAG: self.execution_id,
            TRIAL_ID_TAG: self.trial_id,
            ROLE_TAG: ROLE_TRIAL,
            **self._launch_tags(),
        }
        run = retry_locked(
            lambda: client.create_run(self._experiment_id, tags=all_tags, run_name=run_name or self.trial_id),
            "create trial run",
        )
        log_params(client, run.info.run_id, params)
        return run.info.run_id

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Per-epoch metrics at step = epoch. This attempt's first epoch decides whether the run's history is its
        own: epochs at or after it logged by an earlier (killed) attempt would mix two attempts in one curve, so
        the trial then moves to a fresh run that keeps only the epochs before it (those the checkpoint holds)."""
        run_id = self._need_run("log_epoch")
        if not self._first_epoch_checked:
            self._first_epoch_checked = True
            if self._logged_from(run_id, int(epoch)):
                run_id = self._replace_run(run_id, int(epoch))
        log_metrics(self._client, run_id, dict(metrics), step=int(epoch))

    def log_final(self, metrics: dict[str, float]) -> None:
        """Final test metrics (step 0)."""
        log_metrics(self._client, self._need_run("log_final"), dict(metrics), step=0)

    def log_artifacts(self, out_dir: str) -> None:
        """Upload the trial's output folder (metrics.json, lora_targets.json, config, overlays, PCA plots,
        checkpoint)."""
        run_id = self._need_run("log_artifacts")
        folder = Path(out_dir)
        if not folder.is_dir():
            raise VfmAblateError(f"trial {self.trial_id}: output folder '{folder}' does not exist; nothing to upload")
        retry_locked(lambda: self._client.log_artifacts(run_id, str(folder)), "log artifacts")

    def close(self, status: str, error: str | None = None) -> None:
        """End the run: FINISHED, FAILED (error text as tag `vfm.error` and artifact error.txt) or KILLED."""
        check_status(status)
        run_id = self._need_run("close")
        client = self._client
        if error:
            set_tags(client, run_id, {ERROR_TAG: error})
            retry_locked(lambda: client.log_text(run_id, error, "error.txt"), "log error text")
        retry_locked(lambda: client.set_terminated(run_id, status), "close run")

    def _need_run(self, what: str) -> str:
        if self.run_id is None:
            raise VfmAblateError(f"TrialTracker.{what}() called before open() for trial {self.trial_id}")
        return self.run_id

    def _launch_tags(self) -> dict[str, str]:
        tags = {LAUNCH_TAG: str(self.launch)}
        if self.sweep_run_id:
            tags[SWEEP_RUN_TAG] = self.sweep_run_id
        return tags

    def _logged_from(self, run_id: str, epoch: int) -> bool:
        """True when an earlier attempt logged a per-epoch value at `epoch` or later in this run."""
        run = retry_locked(lambda: self._client.get_run(run_id), "read run")
        for key in (k for k in run.data.metrics if k in EPOCH_METRICS):
            history = retry_locked(lambda: self._client.get_metric_history(run_id, key), "read history")
            if any(m.step >= epoch for m in history):
                return True
        return False

    def _replace_run(self, old_id: str, epoch: int) -> str:
        """A fresh run for this attempt: same params and tags, the epochs before `epoch` copied over; the old run
        is tagged with its successor, ended and deleted (MLflow keeps it restorable: `mlflow runs restore`)."""
        from mlflow.entities import Metric

        client = self._client
        old = retry_locked(lambda: client.get_run(old_id), "read run")
        keep_tags = {k: v for k, v in old.data.tags.items() if not k.startswith("mlflow.") and k != ERROR_TAG}
        new_id = self._create_run(dict(old.data.params), keep_tags, old.info.run_name)
        kept: list[Any] = []
        for key in (k for k in old.data.metrics if k in EPOCH_METRICS):
            history = retry_locked(lambda: client.get_metric_history(old_id, key), "read history")
            kept += [Metric(key, m.value, m.timestamp, m.step) for m in history if m.step < epoch]
        for start in range(0, len(kept), 1000):
            chunk = kept[start : start + 1000]
            retry_locked(lambda: client.log_batch(new_id, metrics=chunk), "copy history")
        set_tags(client, old_id, {SUPERSEDED_TAG: new_id})
        if old.info.status == "RUNNING":
            retry_locked(lambda: client.set_terminated(old_id, "KILLED"), "end superseded run")
        retry_locked(lambda: client.delete_run(old_id), "delete superseded run")
        _log.warning(
            "trial %s: attempt restarts at epoch %d but run %s holds later epochs of an earlier attempt: "
            "continuing in run %s (epochs < %d kept)",
            self.trial_id,
            epoch,
            old_id,
            new_id,
            epoch,
        )
        self.run_id = new_id
        return new_id

    def _check_store_reachable(self) -> None:
        """A sweep's SQLite file must already exist here; if not, this is a remote worker writing to a private copy."""
        db = sqlite_path(self.tracking_uri)
        if db is not None and self.sweep_run_id and not db.exists():
            raise VfmAblateError(
                f"tracking database {db} does not exist on host {socket.gethostname()}: this trial runs on another "
                "machine than the sweep driver, and a local SQLite store cannot be shared between machines. "
                "Start an MLflow server and pass --tracking-uri http://HOST:PORT (see docs/tracking.md)."
            )


def retire_trial_runs(tracking_uri: str, experiment: str, execution_id: str, trial_ids: list[str], reason: str) -> int:
    """Delete (soft: `mlflow runs restore` brings them back) this execution's runs of trials that start over because
    their inputs changed, so that a report never mixes their old results with the new ones; returns how many."""
    client = tracking_client(tracking_uri)
    found = retry_locked(lambda: client.get_experiment_by_name(experiment))
    if found is None:
        return 0
    retired = 0
    for trial_id in trial_ids:
        filt = runs_filter(ROLE_TRIAL, execution_id=execution_id, trial_id=trial_id)
        for run in search_all_runs(client, found.experiment_id, filt):
            set_tags(client, run.info.run_id, {RETIRED_TAG: reason})
            if run.info.status == "RUNNING":
                retry_locked(lambda: client.set_terminated(run.info.run_id, "KILLED"), "end superseded run")
            retry_locked(lambda: client.delete_run(run.info.run_id), "delete superseded run")
            retired += 1
    return retired
