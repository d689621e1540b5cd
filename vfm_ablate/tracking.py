"""MLflow tracking: one parent run per sweep launch, one child run per trial, found again (never duplicated) on retry/resume.

Every call goes through an explicit `MlflowClient` and run id (no global active run), so several trials can
share one process. The local default store is a SQLite file; it is made safe for many concurrent trial
processes (schema created once under a file lock, WAL journal, retry with backoff on "database is locked").
A multi-node cluster needs an MLflow server (`--tracking-uri http://...`): see docs/tracking.md.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import random
import re
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError, VfmAblateError

_log = logging.getLogger(__name__)

# Tag names: one place for each fact (report.py reads the same constants).
SWEEP_ID_TAG = "vfm.sweep_id"
TRIAL_ID_TAG = "vfm.trial_id"
SWEEP_NAME_TAG = "vfm.sweep_name"
ROLE_TAG = "vfm.role"  # "sweep" (a launch's parent run) or "trial" (a child run)
LAUNCH_TAG = "vfm.launch"  # parent: launch number of this sweep id (1, 2, ... on resume)
LAUNCH_RUN_TAG = "vfm.launch_run_id"  # child: the parent run (launch) that opened it most recently
ATTEMPT_TAG = "vfm.attempt"  # child: how many times the trial has been opened (retries, resumes)
ERROR_TAG = "vfm.error"
PARENT_RUN_TAG = "mlflow.parentRunId"  # what the MLflow UI nests runs by
RUN_NAME_TAG = "mlflow.runName"

TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
SQLITE_DB_NAME = "mlflow.db"
ARTIFACT_DIR_NAME = "mlartifacts"

_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:+-]+$")
_MAX_TAG_VALUE = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH
_PARAMS_PER_BATCH = 100  # mlflow.utils.validation.MAX_PARAMS_TAGS_PER_BATCH
_METRICS_PER_BATCH = 1000  # mlflow.utils.validation.MAX_METRICS_PER_BATCH
_LOCK_RETRY_SECONDS = 300.0
_SEARCH_PAGE = 1000

T = TypeVar("T")


# ----------------------------------------------------------------------------------------------- store set-up


def default_tracking_uri(workdir: str | Path) -> str:
    """The local default store `sqlite:///<abs workdir>/mlflow.db`, created in WAL mode so concurrent trials can write."""
    uri = local_tracking_uri(workdir)
    db = sqlite_path(uri)
    assert db is not None
    db.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(db):
        _enable_wal(db)
    return uri


def local_tracking_uri(workdir: str | Path) -> str:
    """Where the local default store of `workdir` is (`sqlite:///<abs>/mlflow.db`), without creating anything."""
    folder = Path(workdir).expanduser().resolve()
    if any(ch in str(folder) for ch in "?#"):
        raise ConfigError(f"working folder '{folder}': '?' and '#' cannot appear in a SQLite tracking URI path")
    return f"sqlite:///{folder / SQLITE_DB_NAME}"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file behind a `sqlite:///` URI (None for servers, other databases and in-memory SQLite)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    raw = tracking_uri[len("sqlite:///") :].split("?", 1)[0]
    if raw in ("", ":memory:"):
        return None
    return Path(raw).expanduser().resolve()


@contextmanager
def _file_lock(db: Path) -> Iterator[None]:
    """An exclusive lock beside the database file, so only one process creates or migrates the schema."""
    lock_path = db.with_name(db.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _enable_wal(db: Path) -> None:
    """WAL lets readers (reports, the UI) work while trials write; it persists in the file."""
    con = sqlite3.connect(str(db), timeout=60)
    try:
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    except sqlite3.OperationalError as err:  # switching needs a moment without other connections; not fatal
        mode = f"unchanged ({err})"
    finally:
        con.close()
    if str(mode).lower() != "wal":
        _log.warning("%s: SQLite journal mode is %s, not WAL: readers may wait for writers", db, mode)


_CLIENTS: dict[str, Any] = {}


def tracking_client(tracking_uri: str) -> Any:
    """One `MlflowClient` per URI and process; a SQLite store's schema is created once, under a file lock."""
    client = _CLIENTS.get(tracking_uri)
    if client is not None:
        return client
    from mlflow import MlflowClient

    client = None
    db = sqlite_path(tracking_uri)
    if db is not None:
        with _file_lock(db):
            _enable_wal(db)
            if not _schema_at_head(db):
                # The client builds the store, which creates/migrates the tables; concurrent first use races without
                # the lock (observed: "duplicate column name: step" from two processes migrating one fresh file).
                client = _retry_locked(lambda: MlflowClient(tracking_uri=tracking_uri), "open tracking store")
    if client is None:  # schema ready (or a server): no need to serialise the slow store construction
        client = _retry_locked(lambda: MlflowClient(tracking_uri=tracking_uri), "open tracking store")
    _CLIENTS[tracking_uri] = client
    return client


def _schema_at_head(db: Path) -> bool:
    """True when the file already holds MLflow's current schema (then opening it writes nothing)."""
    try:
        from mlflow.store.db.utils import _get_latest_schema_revision  # private: fall back to locking if it moves

        head = _get_latest_schema_revision()
        con = sqlite3.connect(str(db), timeout=60)
        try:
            rows = con.execute("SELECT version_num FROM alembic_version").fetchall()
        finally:
            con.close()
    except Exception:
        return False
    return [r[0] for r in rows] == [head]


def _is_lock_error(err: BaseException) -> bool:
    text = str(err).lower()
    return "database is locked" in text or "database table is locked" in text or "sqlite_busy" in text


def _retry_locked(fn: Callable[[], T], what: str = "MLflow call") -> T:
    """Run `fn`, retrying with jittered exponential backoff while SQLite reports a lock (MLflow waits 20 s per try)."""
    deadline = time.monotonic() + _LOCK_RETRY_SECONDS
    delay = 0.05
    while True:
        try:
            return fn()
        except Exception as err:  # MlflowException wraps sqlite3.OperationalError
            if not _is_lock_error(err) or time.monotonic() > deadline:
                raise
            _log.warning("%s: database is locked, retrying in %.2f s", what, delay)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)


def check_id(value: str, what: str) -> str:
    """Sweep/trial ids go into MLflow filter strings: allow only characters that need no quoting."""
    if not isinstance(value, str) or not _ID_PATTERN.match(value):
        raise ConfigError(f"{what} {value!r}: expected letters, digits and . _ : + - only (it is used in MLflow filters)")
    return value


def _check_status(status: str) -> str:
    if status not in TERMINAL_STATUSES:
        raise ConfigError(f"run status {status!r}: expected one of {', '.join(TERMINAL_STATUSES)}")
    return status


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def ensure_experiment(client: Any, experiment: str, tracking_uri: str) -> str:
    """Id of `experiment`, created if needed; a local store keeps artifacts beside the database, not in the CWD."""
    from mlflow.exceptions import MlflowException

    if not experiment or not experiment.strip():
        raise ConfigError("tracking experiment name is empty")
    found = _retry_locked(lambda: client.get_experiment_by_name(experiment))
    if found is None:
        db = sqlite_path(tracking_uri)
        location = None
        if db is not None:
            safe = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment)[:80]
            digest = hashlib.sha1(experiment.encode()).hexdigest()[:8]
            location = (db.parent / ARTIFACT_DIR_NAME / f"{safe}-{digest}").as_uri()
        try:
            return _retry_locked(lambda: client.create_experiment(experiment, artifact_location=location))
        except MlflowException:
            found = client.get_experiment_by_name(experiment)  # created concurrently by another process
            if found is None:
                raise
    if found.lifecycle_stage != "active":
        raise VfmAblateError(
            f"MLflow experiment '{experiment}' exists but is deleted in {tracking_uri}; restore it "
            f"(mlflow experiments restore --experiment-id {found.experiment_id}) or choose another experiment name"
        )
    return found.experiment_id


def search_all_runs(client: Any, experiment_id: str, filter_string: str = "", order_by: list[str] | None = None) -> list[Any]:
    """Every active run of an experiment matching `filter_string` (all pages)."""
    runs: list[Any] = []
    token = None
    while True:
        page = _retry_locked(
            lambda: client.search_runs(
                [experiment_id], filter_string=filter_string, max_results=_SEARCH_PAGE, order_by=order_by, page_token=token
            )
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _log_params(client: Any, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(str(k), str(v)) for k, v in params.items()]
    for start in range(0, len(items), _PARAMS_PER_BATCH):
        chunk = items[start : start + _PARAMS_PER_BATCH]
        _retry_locked(lambda: client.log_batch(run_id, params=chunk), "log params")


def _set_tags(client: Any, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(str(k), str(v)[:_MAX_TAG_VALUE]) for k, v in tags.items()]
    for start in range(0, len(items), _PARAMS_PER_BATCH):
        chunk = items[start : start + _PARAMS_PER_BATCH]
        _retry_locked(lambda: client.log_batch(run_id, tags=chunk), "set tags")


def _log_metrics(client: Any, run_id: str, metrics: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    # None = "not computed here" (e.g. peak GPU memory on a CPU): left out rather than logged as a number
    items = [Metric(key, _as_float(key, value), now, step) for key, value in metrics.items() if value is not None]
    for start in range(0, len(items), _METRICS_PER_BATCH):
        chunk = items[start : start + _METRICS_PER_BATCH]
        _retry_locked(lambda: client.log_batch(run_id, metrics=chunk), "log metrics")


def _as_float(key: str, value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise VfmAblateError(f"metric '{key}': expected a number, got {value!r}") from None
    if math.isinf(out):
        _log.warning("metric '%s' is infinite", key)
    return out


# ----------------------------------------------------------------------------------------------- driver side


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
            f"tags.`{SWEEP_ID_TAG}` = {_quote(self.sweep_id)} and tags.`{ROLE_TAG}` = 'sweep'",
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
        run = _retry_locked(
            lambda: client.create_run(self.experiment_id, tags=all_tags, run_name=f"{self.sweep_name} launch {launch}"),
            "create sweep run",
        )
        self.run_id = run.info.run_id
        _log_params(client, self.run_id, params)
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
                _retry_locked(lambda: client.set_terminated(run.info.run_id, "KILLED"), "end stale trial run")
        for run in stale:
            _log.warning("launch run %s of sweep %s was left RUNNING (driver killed): marking it KILLED",
                         run.info.run_id, self.sweep_id)
            _retry_locked(lambda: client.set_terminated(run.info.run_id, "KILLED"), "end stale launch run")

    def reconcile(self, finished: dict[str, str]) -> None:
        """Set the final status of trials whose run is still RUNNING (e.g. the trial process died before close())."""
        if not finished:
            return
        for status in finished.values():
            _check_status(status)
        client = self._client
        for run in self._running_children():
            trial_id = run.data.tags.get(TRIAL_ID_TAG)
            if trial_id in finished:
                _retry_locked(lambda: client.set_terminated(run.info.run_id, finished[trial_id]), "reconcile")

    def finish(self, status: str = "FINISHED") -> None:
        """End the launch: trial runs it opened that are still RUNNING become KILLED, then the parent gets `status`."""
        _check_status(status)
        if self.run_id is None:
            raise VfmAblateError("SweepTracker.finish() called before start()")
        client = self._client
        for run in self._running_children():
            if run.data.tags.get(LAUNCH_RUN_TAG) == self.run_id:
                trial_id = run.data.tags.get(TRIAL_ID_TAG)
                _log.warning("trial %s still RUNNING at the end of the sweep: marking it KILLED", trial_id)
                _retry_locked(lambda: client.set_terminated(run.info.run_id, "KILLED"), "finish")
        _retry_locked(lambda: client.set_terminated(self.run_id, status), "finish sweep run")

    def __enter__(self) -> "SweepTracker":
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
            f"tags.`{SWEEP_ID_TAG}` = {_quote(self.sweep_id)} and tags.`{ROLE_TAG}` = 'trial' "
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
            f"tags.`{SWEEP_ID_TAG}` = {_quote(self.sweep_id)} and tags.`{TRIAL_ID_TAG}` = {_quote(self.trial_id)}",
            order_by=["attributes.start_time ASC"],
        )
        params = {str(k): str(v) for k, v in params.items()}
        if existing:
            if len(existing) > 1:
                _log.warning("trial %s has %d runs; re-using the oldest", self.trial_id, len(existing))
            run = existing[0]
            self.run_id = run.info.run_id
            attempt = int(run.data.tags.get(ATTEMPT_TAG, "1")) + 1
            _retry_locked(lambda: client.update_run(self.run_id, status="RUNNING"), "re-open run")
            _set_tags(client, self.run_id, {**(tags or {}), ATTEMPT_TAG: str(attempt), **self._launch_tags()})
            logged = run.data.params
            conflicts = {k: (logged[k], v) for k, v in params.items() if k in logged and logged[k] != v}
            if conflicts:
                shown = "; ".join(f"{k}: logged {old!r}, now {new!r}" for k, (old, new) in sorted(conflicts.items()))
                raise VfmAblateError(
                    f"trial {self.trial_id} (run {self.run_id}) was re-opened with different params ({shown}); "
                    "a trial id must always describe the same settings"
                )
            _log_params(client, self.run_id, {k: v for k, v in params.items() if k not in run.data.params})
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
            run = _retry_locked(
                lambda: client.create_run(experiment_id, tags=all_tags, run_name=_run_name(params, self.trial_id)),
                "create trial run",
            )
            self.run_id = run.info.run_id
            _log_params(client, self.run_id, params)
            self._logged_steps = set()
        return self.run_id

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Per-epoch metrics at step=epoch; epochs already in the run (logged before a resume) are skipped."""
        run_id = self._need_run("log_epoch")
        fresh = {k: v for k, v in metrics.items() if (k, int(epoch)) not in self._logged_steps}
        if not fresh:
            return
        _log_metrics(self._client, run_id, fresh, step=int(epoch))
        self._logged_steps.update((k, int(epoch)) for k in fresh)

    def log_final(self, metrics: dict[str, float]) -> None:
        """Final test metrics (step 0); a later attempt's values supersede earlier ones as the run's latest."""
        _log_metrics(self._client, self._need_run("log_final"), dict(metrics), step=0)

    def log_artifacts(self, out_dir: str) -> None:
        """Upload the trial's output folder (metrics.json, lora_targets.json, config, overlays, PCA plots, checkpoint)."""
        run_id = self._need_run("log_artifacts")
        folder = Path(out_dir)
        if not folder.is_dir():
            raise VfmAblateError(f"trial {self.trial_id}: output folder '{folder}' does not exist; nothing to upload")
        _retry_locked(lambda: self._client.log_artifacts(run_id, str(folder)), "log artifacts")

    def close(self, status: str, error: str | None = None) -> None:
        """End the run: FINISHED, FAILED (error text as tag `vfm.error` and artifact error.txt) or KILLED."""
        _check_status(status)
        run_id = self._need_run("close")
        client = self._client
        if error:
            _set_tags(client, run_id, {ERROR_TAG: error})
            _retry_locked(lambda: client.log_text(run_id, error, "error.txt"), "log error text")
        _retry_locked(lambda: client.set_terminated(run_id, status), "close run")

    def _need_run(self, what: str) -> str:
        if self.run_id is None:
            raise VfmAblateError(f"TrialTracker.{what}() called before open() for trial {self.trial_id}")
        return self.run_id

    def _launch_tags(self) -> dict[str, str]:
        return {LAUNCH_RUN_TAG: self.parent_run_id} if self.parent_run_id else {}

    def _steps_already_logged(self, run: Any) -> set[tuple[str, int]]:
        steps: set[tuple[str, int]] = set()
        for key in run.data.metrics:
            history = _retry_locked(lambda: self._client.get_metric_history(run.info.run_id, key))
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
