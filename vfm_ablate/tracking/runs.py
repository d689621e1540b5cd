"""MLflow runs of a sweep: one parent run per sweep launch, one child run per trial, found again (never
duplicated) on retry/resume. The tag names here are the contract the report reads back."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

from ..errors import VfmAblateError
from .store import (
    check_id,
    check_status,
    ensure_experiment,
    log_metrics,
    log_params,
    quote,
    retry_locked,
    search_all_runs,
    set_tags,
    sqlite_path,
    tracking_client,
)

_log = logging.getLogger(__name__)

# Tag names: one place for each fact (the report reads the same constants).
SWEEP_ID_TAG = "vfm.sweep_id"
TRIAL_ID_TAG = "vfm.trial_id"
SWEEP_NAME_TAG = "vfm.sweep_name"
ROLE_TAG = "vfm.role"  # "sweep" (a launch's parent run) or "trial" (a child run)
LAUNCH_TAG = "vfm.launch"  # parent: launch number of this sweep id (1, 2, ... on resume)
LAUNCH_RUN_TAG = "vfm.launch_run_id"  # child: the parent run (launch) that opened it most recently
ATTEMPT_TAG = "vfm.attempt"  # child: how many times the trial has been opened (retries, resumes)
ERROR_TAG = "vfm.error"
SUPERSEDED_TAG = "vfm.superseded"  # a deleted run of a trial that started over (its inputs changed): why, when
PARENT_RUN_TAG = "mlflow.parentRunId"  # what the MLflow UI nests runs by
RUN_NAME_TAG = "mlflow.runName"


class SweepTracker:
    """Driver side of one `vfm-ablate run` launch: the parent run that the launch's trial runs nest under."""

    def __init__(self, tracking_uri: str, experiment: str, sweep_name: str, sweep_id: str):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.sweep_name = sweep_name
        self.sweep_id = check_id(sweep_id, "sweep id")
        self.run_id: str | None = None
        self.experiment_id: str | None = None

    @property
    def _client(self) -> Any:
        return tracking_client(self.tracking_uri)

    def start(self, params: dict[str, str], tags: dict[str, str] | None = None) -> str:
        """Create this launch's parent run (launch 1, 2, ... of the sweep id) and log the sweep-level params."""
        client = self._client
        self.experiment_id = ensure_experiment(client, self.experiment, self.tracking_uri)
        earlier = search_all_runs(
            client,
            self.experiment_id,
            f"tags.`{SWEEP_ID_TAG}` = {quote(self.sweep_id)} and tags.`{ROLE_TAG}` = 'sweep'",
        )
        self._end_stale_launches(client, earlier)
        launch = len(earlier) + 1
        all_tags = {
            **(tags or {}),
            SWEEP_ID_TAG: self.sweep_id,
            SWEEP_NAME_TAG: self.sweep_name,
            ROLE_TAG: "sweep",
            LAUNCH_TAG: str(launch),
        }
        run = retry_locked(
            lambda: client.create_run(self.experiment_id, tags=all_tags, run_name=f"{self.sweep_name} launch {launch}"),
            "create sweep run",
        )
        self.run_id = run.info.run_id
        log_params(client, self.run_id, params)
        return self.run_id

    def _end_stale_launches(self, client: Any, launches: list[Any]) -> None:
        """A launch whose driver was SIGKILLed left its parent (and the trials it ran) RUNNING: end them as KILLED.

        A new launch of the same sweep id only starts once the old driver is gone (`--resume` needs its storage),
        so any launch still RUNNING here is dead. Its trials that this launch runs again are re-opened as RUNNING.
        """
        stale = [r for r in launches if r.info.status == "RUNNING"]
        if not stale:
            return
        stale_ids = {r.info.run_id for r in stale}
        for run in self._running_children():
            if run.data.tags.get(LAUNCH_RUN_TAG) in stale_ids:
                retry_locked(lambda: client.set_terminated(run.info.run_id, "KILLED"), "end stale trial run")
        for run in stale:
            _log.warning(
                "launch run %s of sweep %s was left RUNNING (driver killed): marking it KILLED",
                run.info.run_id,
                self.sweep_id,
            )
            retry_locked(lambda: client.set_terminated(run.info.run_id, "KILLED"), "end stale launch run")

    def reconcile(self, finished: dict[str, str]) -> None:
        """Set the final status of trials whose run is still RUNNING (e.g. the trial process died before close())."""
        if not finished:
            return
        for status in finished.values():
            check_status(status)
        client = self._client
        for run in self._running_children():
            trial_id = run.data.tags.get(TRIAL_ID_TAG)
            if trial_id in finished:
                retry_locked(lambda: client.set_terminated(run.info.run_id, finished[trial_id]), "reconcile")

    def finish(self, status: str = "FINISHED") -> None:
        """End the launch: trial runs it opened that are still RUNNING become KILLED, then the parent gets `status`."""
        check_status(status)
        if self.run_id is None:
            raise VfmAblateError("SweepTracker.finish() called before start()")
        client = self._client
        for run in self._running_children():
            if run.data.tags.get(LAUNCH_RUN_TAG) == self.run_id:
                trial_id = run.data.tags.get(TRIAL_ID_TAG)
                _log.warning("trial %s still RUNNING at the end of the sweep: marking it KILLED", trial_id)
                retry_locked(lambda: client.set_terminated(run.info.run_id, "KILLED"), "finish")
        retry_locked(lambda: client.set_terminated(self.run_id, status), "finish sweep run")

    def __enter__(self) -> SweepTracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """Leave no RUNNING parent behind: KILLED on Ctrl-C, FAILED on an error, FINISHED otherwise."""
        if self.run_id is None:
            return
        if exc_type is None:
            self.finish("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("KILLED")
        else:
            self.finish("FAILED")

    def _running_children(self) -> list[Any]:
        if self.experiment_id is None:
            self.experiment_id = ensure_experiment(self._client, self.experiment, self.tracking_uri)
        return search_all_runs(
            self._client,
            self.experiment_id,
            f"tags.`{SWEEP_ID_TAG}` = {quote(self.sweep_id)} and tags.`{ROLE_TAG}` = 'trial' "
            "and attributes.status = 'RUNNING'",
        )


# ----------------------------------------------------------------------------------------------- trial side


class TrialTracker:
    """Trial side: the trial's child run, found again by (sweep id, trial id) so retries and resumes never duplicate it.

    Holds only plain picklable values; the MLflow client comes from a per-process cache in the process that uses it.
    """

    def __init__(self, tracking_uri: str, experiment: str, parent_run_id: str | None, sweep_id: str, trial_id: str):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self.sweep_id = check_id(sweep_id, "sweep id")
        self.trial_id = check_id(trial_id, "trial id")
        self.run_id: str | None = None
        self._logged_steps: set[tuple[str, int]] = set()

    @property
    def _client(self) -> Any:
        return tracking_client(self.tracking_uri)

    def open(self, params: dict[str, str], tags: dict[str, str] | None = None) -> str:
        """Find or create the child run, mark it RUNNING, log the params it lacks; returns the run id."""
        self._check_store_reachable()
        client = self._client
        experiment_id = ensure_experiment(client, self.experiment, self.tracking_uri)
        existing = search_all_runs(
            client,
            experiment_id,
            f"tags.`{SWEEP_ID_TAG}` = {quote(self.sweep_id)} and tags.`{TRIAL_ID_TAG}` = {quote(self.trial_id)}",
            order_by=["attributes.start_time ASC"],
        )
        params = {str(k): str(v) for k, v in params.items()}
        if existing:
            if len(existing) > 1:
                _log.warning("trial %s has %d runs; re-using the oldest", self.trial_id, len(existing))
            run = existing[0]
            self.run_id = run.info.run_id
            attempt = int(run.data.tags.get(ATTEMPT_TAG, "1")) + 1
            retry_locked(lambda: client.update_run(self.run_id, status="RUNNING"), "re-open run")
            set_tags(client, self.run_id, {**(tags or {}), ATTEMPT_TAG: str(attempt), **self._launch_tags()})
            logged = run.data.params
            conflicts = {k: (logged[k], v) for k, v in params.items() if k in logged and logged[k] != v}
            if conflicts:
                shown = "; ".join(f"{k}: logged {old!r}, now {new!r}" for k, (old, new) in sorted(conflicts.items()))
                raise VfmAblateError(
                    f"trial {self.trial_id} (run {self.run_id}) was re-opened with different params ({shown}); "
                    "a trial id must always describe the same settings"
                )
            log_params(client, self.run_id, {k: v for k, v in params.items() if k not in run.data.params})
            self._logged_steps = self._steps_already_logged(run)
        else:
            all_tags = {
                **(tags or {}),
                SWEEP_ID_TAG: self.sweep_id,
                TRIAL_ID_TAG: self.trial_id,
                ROLE_TAG: "trial",
                ATTEMPT_TAG: "1",
                **self._launch_tags(),
            }
            if self.parent_run_id:
                all_tags[PARENT_RUN_TAG] = self.parent_run_id
            run = retry_locked(
                lambda: client.create_run(experiment_id, tags=all_tags, run_name=_run_name(params, self.trial_id)),
                "create trial run",
            )
            self.run_id = run.info.run_id
            log_params(client, self.run_id, params)
            self._logged_steps = set()
        return self.run_id

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Per-epoch metrics at step=epoch; epochs already in the run (logged before a resume) are skipped."""
        run_id = self._need_run("log_epoch")
        fresh = {k: v for k, v in metrics.items() if (k, int(epoch)) not in self._logged_steps}
        if not fresh:
            return
        log_metrics(self._client, run_id, fresh, step=int(epoch))
        self._logged_steps.update((k, int(epoch)) for k in fresh)

    def log_final(self, metrics: dict[str, float]) -> None:
        """Final test metrics (step 0); a later attempt's values supersede earlier ones as the run's latest."""
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
        return {LAUNCH_RUN_TAG: self.parent_run_id} if self.parent_run_id else {}

    def _steps_already_logged(self, run: Any) -> set[tuple[str, int]]:
        steps: set[tuple[str, int]] = set()
        for key in run.data.metrics:
            history = retry_locked(lambda: self._client.get_metric_history(run.info.run_id, key))
            steps.update((key, int(m.step)) for m in history)
        return steps

    def _check_store_reachable(self) -> None:
        """A sweep's SQLite file must already exist here; if not, this is a remote worker writing to a private copy."""
        db = sqlite_path(self.tracking_uri)
        if db is not None and self.parent_run_id and not db.exists():
            raise VfmAblateError(
                f"tracking database {db} does not exist on host {socket.gethostname()}: this trial runs on another "
                "machine than the sweep driver, and a local SQLite store cannot be shared between machines. "
                "Start an MLflow server and pass --tracking-uri http://HOST:PORT (see docs/tracking.md)."
            )


def _run_name(params: dict[str, str], trial_id: str) -> str:
    """A readable run name for the UI list: backbone, regime, training data, seed, short trial id."""
    parts = [params.get("backbone"), params.get("regime"), (params.get("data.train") or "").replace(",", "+")]
    seed = params.get("seed")
    name = "-".join(p for p in parts if p)
    if seed:
        name += f"-s{seed}"
    return f"{name}-{trial_id[:6]}" if name else trial_id


def retire_trial_runs(tracking_uri: str, experiment: str, sweep_id: str, trial_ids: list[str], reason: str) -> int:
    """Delete (soft: `mlflow runs restore` brings them back) the runs of trials that start over because their inputs
    changed, so that a report never mixes their old results with the new ones; returns how many were deleted."""
    client = tracking_client(tracking_uri)
    found = retry_locked(lambda: client.get_experiment_by_name(experiment))
    if found is None:
        return 0
    retired = 0
    for trial_id in trial_ids:
        filt = f"tags.`{SWEEP_ID_TAG}` = {quote(check_id(sweep_id, 'sweep id'))} and tags.`{TRIAL_ID_TAG}` = " + quote(
            check_id(trial_id, "trial id")
        )
        for run in search_all_runs(client, found.experiment_id, filt):
            set_tags(client, run.info.run_id, {SUPERSEDED_TAG: reason})
            if run.info.status == "RUNNING":
                retry_locked(lambda: client.set_terminated(run.info.run_id, "KILLED"), "end superseded run")
            retry_locked(lambda: client.delete_run(run.info.run_id), "delete superseded run")
            retired += 1
    return retired
