"""Run a sweep on Ray Tune: the trainable around run_trial, per-trial resources, Tuner build/restore, progress, results.

Layout under the storage path (a local folder, a shared filesystem path or a URI such as s3://bucket/x):

    <storage>/<sweep name>/tune/               Ray Tune's experiment (grid mode): state, per-trial checkpoints
    <storage>/<sweep name>/search-<point id>/  one Ray Tune experiment per grid point (search mode)
    <storage>/<sweep name>/sweep.json          the sweep's manifest: name, sweep id, trial ids (checked on --resume)
    <storage>/<sweep name>/trials/<trial id>/  the trial's durable record, written by the trial itself:
        attempts/<n>.json   one file per start (node, host, pid, start/end time, resumed or not, status, error)
        outputs/            run_trial's output folder (metrics.json, lora_targets.json, overlays, config.yaml)
        result.json         written once the trial finished; a trial that finds it never trains again
    <storage>/<sweep name>/results.csv         the final table, every metric

Ray's own experiment state is saved only every few seconds, so after a SIGKILL of the driver it may still call a
finished trial "running"; the trial's `result.json` is what guarantees that `--resume` never trains it twice.
"""

from __future__ import annotations

import csv
import gc
import hashlib
import io
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .config import TrialSpec
from .data.entries import DatasetEntry
from .errors import ConfigError
from .models.registry import BackboneEntry
from .sweepspec import (
    PlannedTrial,
    SweepPlan,
    SweepSpec,
    format_table,
    plan,
    resolved_entries,
    short_label,
    spec_with_samples,
    without_gpus,
)

GRID_EXPERIMENT = "tune"
MANIFEST = "sweep.json"
RESULTS_CSV = "results.csv"
STORAGE_ENV = "VFM_ABLATE_STORAGE_PATH"  # a cluster's shared results location (set once in cluster.yaml / sbatch)
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own variable, e.g. the head node's MLflow server
DEFAULT_STORAGE = "./ray_results"
HEADLINE = "iou_fg"  # the one IoU per trial shown in progress/tables: macro over test datasets, or the single one


# --------------------------------------------------------------------------------------------- durable trial records


class TrialStore:
    """Per-trial records under `<storage>/<sweep>` on any filesystem pyarrow reaches (local, NFS, s3://, gs://)."""

    def __init__(self, root: str):
        import pyarrow.fs as pafs

        self.root = root
        if "://" in root:
            self._fs, self._base = pafs.FileSystem.from_uri(root)
        else:
            self._fs, self._base = pafs.LocalFileSystem(), str(Path(root).resolve())

    def __reduce__(self) -> tuple[Any, tuple[str]]:  # ship only the root to Ray workers
        return (TrialStore, (self.root,))

    def _path(self, rel: str) -> str:
        return f"{self._base.rstrip('/')}/{rel}" if rel else self._base

    def write_text(self, rel: str, text: str) -> None:
        """Write-then-rename, so a reader never sees half a file (rename is atomic on local/NFS stores)."""
        path = self._path(rel)
        self._fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        tmp = f"{path}.tmp-{os.getpid()}-{time.monotonic_ns()}"
        with self._fs.open_output_stream(tmp) as out:
            out.write(text.encode())
        self._fs.move(tmp, path)

    def write_json(self, rel: str, payload: Any) -> None:
        self.write_text(rel, json.dumps(payload, indent=2, sort_keys=True, default=str))

    def read_json(self, rel: str) -> Any | None:
        import pyarrow.fs as pafs

        path = self._path(rel)
        if self._fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self._fs.open_input_stream(path) as src:
            return json.loads(src.read().decode())

    def list_names(self, rel: str) -> list[str]:
        import pyarrow.fs as pafs

        infos = self._fs.get_file_info(pafs.FileSelector(self._path(rel), allow_not_found=True))
        return sorted(i.base_name for i in infos if ".tmp-" not in i.base_name)

    def upload_dir(self, local: Path, rel: str) -> None:
        import pyarrow.fs as pafs

        dest = self._path(rel)
        self._fs.create_dir(dest, recursive=True)
        pafs.copy_files(str(local), dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self._fs)

    # ---- trial records

    def result(self, trial_id: str) -> dict[str, Any] | None:
        return self.read_json(f"trials/{trial_id}/result.json")

    def results(self) -> dict[str, dict[str, Any]]:
        out = {}
        for tid in self.list_names("trials"):
            record = self.result(tid)
            if record is not None:
                out[tid] = record
        return out

    def attempts(self, trial_id: str) -> list[dict[str, Any]]:
        names = self.list_names(f"trials/{trial_id}/attempts")
        return [a for a in (self.read_json(f"trials/{trial_id}/attempts/{n}") for n in names) if a is not None]

    def start_attempt(self, trial_id: str, info: dict[str, Any]) -> str:
        name = f"{time.time_ns()}-{os.getpid()}.json"
        self.write_json(f"trials/{trial_id}/attempts/{name}", {**info, "start": time.time(), "status": "RUNNING"})
        return name

    def end_attempt(
        self, trial_id: str, name: str, status: str, error: BaseException | None = None, **extra: Any
    ) -> None:
        rel = f"trials/{trial_id}/attempts/{name}"
        record = self.read_json(rel) or {}
        update: dict[str, Any] = {"end": time.time(), "status": status, **extra}
        if error is not None:
            update["error"] = error_summary(error)
            update["traceback"] = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self.write_json(rel, {**record, **update})

    def last_error(self, trial_id: str) -> str | None:
        errors = [a["error"] for a in self.attempts(trial_id) if a.get("error")]
        return errors[-1] if errors else None


def error_summary(err: BaseException) -> str:
    """`Type: message` on one line: what the progress view and the result table show for a failed trial."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def resolve_storage_path(sweep: SweepSpec, given: str | None) -> str:
    """--storage-path, else the sweep file's run.storage_path, else $VFM_ABLATE_STORAGE_PATH, else ./ray_results."""
    return given or sweep.run.storage_path or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def storage_root(storage_path: str, sweep_name: str, workdir: Path) -> str:
    """`<storage>/<sweep name>`: relative local paths resolve against the working folder; URIs stay as given."""
    if "://" in storage_path:
        return f"{storage_path.rstrip('/')}/{sweep_name}"
    base = Path(storage_path).expanduser()
    if not base.is_absolute():
        base = workdir / base
    return str((base / sweep_name).resolve())


# --------------------------------------------------------------------------------------------- the trainable


@dataclass(frozen=True)
class TrackingTarget:
    """Where trials log (picklable: shipped to every trial)."""

    uri: str
    experiment: str
    parent_run_id: str | None
    sweep_id: str


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs besides its config; resolved once on the driver (absolute paths, inline entries)."""

    store: TrialStore
    backbones: dict[str, BackboneEntry]
    datasets: dict[str, DatasetEntry]
    checkpoint_every: int = 1
    checkpoint_min_interval_s: float = 0.0
    tracking: TrackingTarget | None = None


def unwrap_config(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's own config: grid mode nests it under "trial" (the grid_search key), search mode does not."""
    return config["trial"] if "trial" in config else config


def trial_spec_from_config(config: dict[str, Any]) -> TrialSpec:
    """The TrialSpec a Ray trial runs: its grid point plus, in search mode, the sampled values (dotted keys)."""
    config = unwrap_config(config)
    spec = TrialSpec.model_validate(config["spec"])
    return spec_with_samples(spec, dict(config.get("search") or {}))


def headline_iou(metrics: dict[str, Any]) -> float | None:
    """macro_iou_fg with several test datasets, else the single iou_fg/<dataset>."""
    if "macro_iou_fg" in metrics:
        return float(metrics["macro_iou_fg"])
    per = [float(v) for k, v in metrics.items() if k.startswith("iou_fg/")]
    return per[0] if len(per) == 1 else None


class _TuneReporter:
    """run_trial's reporter inside a Ray trial: every epoch -> tune.report and MLflow; the training state goes
    with it every `every` epochs once `min_interval_s` have passed (a checkpoint of the study's head + optimiser
    is ~60 MB: every epoch would cost more than a short epoch itself)."""

    def __init__(self, every: int, min_interval_s: float, tracker: Any | None):
        self.every = every
        self.min_interval_s = min_interval_s
        self.tracker = tracker
        self.seconds = 0.0  # spent here (MLflow, checkpoint, tune.report): the per-trial cost of the sweep machinery
        self.epochs = 0  # reported by this attempt (a resumed attempt reports only the epochs it still had to run)
        self._last_checkpoint = time.monotonic()

    def epoch_end(self, epoch: int, metrics: dict[str, float], save_checkpoint: Callable[[Path], None]) -> None:
        from ray import tune

        start = time.perf_counter()
        self.epochs += 1
        if self.tracker is not None:
            self.tracker.log_epoch(epoch, metrics)
        due = time.monotonic() - self._last_checkpoint >= self.min_interval_s
        if (epoch + 1) % self.every == 0 and due:
            self._last_checkpoint = time.monotonic()
            with tempfile.TemporaryDirectory(prefix="vfm-ckpt-") as folder:
                save_checkpoint(Path(folder))
                tune.report(dict(metrics), checkpoint=tune.Checkpoint.from_directory(folder))
        else:
            tune.report(dict(metrics))
        self.seconds += time.perf_counter() - start


def _final_report(metrics: dict[str, Any]) -> dict[str, Any]:
    """The last tune.report: test metrics, plus val_loss = the selected (best) model's validation loss."""
    out = dict(metrics)
    out["val_loss"] = float(metrics.get("best_val_loss", float("nan")))
    iou = headline_iou(metrics)
    if iou is not None:
        out[HEADLINE] = iou
    out["trial_done"] = 1.0
    return out


def run_one_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Body of every Ray trial: skip if already finished, else (resume and) run the trial engine and record it."""
    import ray
    from ray import tune

    from .train import run_trial

    config = unwrap_config(config)
    spec = trial_spec_from_config(config)
    tid = spec.trial_id()
    done = ctx.store.result(tid)
    if done is not None:  # finished in an earlier launch whose driver died before Ray saved that
        tune.report(_final_report(done["metrics"]))
        return

    checkpoint = tune.get_checkpoint()
    node_id = ray.get_runtime_context().get_node_id()
    attempt = ctx.store.start_attempt(
        tid,
        {
            "trial_id": tid,
            "ray_trial_id": tune.get_context().get_trial_id(),
            "node_id": node_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "resumed": checkpoint is not None,
            "cpu": config.get("cpu"),
            "gpu": config.get("gpu"),
        },
    )
    tracker = None
    reporter = _TuneReporter(ctx.checkpoint_every, ctx.checkpoint_min_interval_s, None)
    out_dir = Path(tempfile.mkdtemp(prefix=f"vfm-{tid}-"))
    try:
        tracker = reporter.tracker = _open_tracker(ctx, spec, tid, node_id)
        kwargs = {"reporter": reporter, "backbones": ctx.backbones, "datasets": ctx.datasets}
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                result = run_trial(spec, out_dir, resume_from=Path(folder), **kwargs)
        else:
            result = run_trial(spec, out_dir, **kwargs)
        ctx.store.upload_dir(out_dir, f"trials/{tid}/outputs")
        if tracker is not None:
            tracker.log_final(result.metrics)
            tracker.log_artifacts(str(out_dir))
            tracker.close("FINISHED")
        record = {
            "trial_id": tid,
            "spec": spec.model_dump(mode="json"),
            "metrics": result.metrics,
            "lora_targets": result.lora_targets,
            "node_id": node_id,
            "finished": time.time(),
        }
        ctx.store.write_json(f"trials/{tid}/result.json", record)
        ctx.store.end_attempt(tid, attempt, "FINISHED", reporting_s=reporter.seconds, epochs_run=reporter.epochs)
    except BaseException as err:
        status = "FAILED" if isinstance(err, Exception) else "KILLED"
        ctx.store.end_attempt(tid, attempt, status, err, reporting_s=reporter.seconds, epochs_run=reporter.epochs)
        _after_failure(ctx, tid, out_dir, tracker, status, err)
        raise  # Ray records the trial as errored (and retries it per max_failures)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
        _release_memory()
    tune.report(_final_report(result.metrics))


def _after_failure(ctx: TrialContext, tid: str, out_dir: Path, tracker: Any | None, status: str, err: BaseException) -> None:
    """Keep what a failed trial wrote (partial outputs) and close its MLflow run; never hide the trial's own error."""
    import logging

    log = logging.getLogger(__name__)
    try:
        if any(out_dir.iterdir()):
            ctx.store.upload_dir(out_dir, f"trials/{tid}/outputs")
        if tracker is not None and tracker.run_id is not None:
            text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            tracker.close(status, error=text if status == "FAILED" else None)
    except Exception:  # the store or MLflow may be what failed: the trial's error is the one to raise
        log.exception("trial %s: could not record its failure everywhere", tid)


def _open_tracker(ctx: TrialContext, spec: TrialSpec, tid: str, node_id: str) -> Any | None:
    if ctx.tracking is None:
        return None
    from .tracking import TrialTracker

    t = ctx.tracking
    entry = ctx.backbones[spec.backbone]
    tracker = TrialTracker(t.uri, t.experiment, t.parent_run_id, t.sweep_id, tid)
    params = {
        **spec.flat_params(),
        "backbone.family": entry.family,
        "backbone.scale": entry.scale,
        "backbone.embed_dim": str(entry.embed_dim),
    }
    tracker.open(params, {"vfm.node_id": node_id, "vfm.outputs": f"{ctx.store.root}/trials/{tid}/outputs"})
    return tracker


def _release_memory() -> None:
    """Actors are reused between trials: give the GPU memory this trial held back before the next one starts.

    Only on GPUs: a full gc.collect() costs ~0.3 s with torch loaded (a tenth of a demo trial), and on CPU the
    interpreter's own collector frees the trial's cycles soon enough."""
    import torch

    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


def make_trainable(ctx: TrialContext) -> Any:
    """The Ray Tune function trainable, with each trial's CPU/GPU ask taken from its config."""
    from ray import tune

    def vfm_trial(config: dict[str, Any]) -> None:
        run_one_trial(config, ctx)

    return tune.with_resources(vfm_trial, resources=trial_resources)


def trial_resources(config: dict[str, Any]) -> Any:
    """One bundle per trial: the config's `cpu` and (when non-zero) `gpu`."""
    from ray import tune

    config = unwrap_config(config)
    bundle = {"CPU": float(config["cpu"])}
    if float(config.get("gpu", 0)) > 0:
        bundle["GPU"] = float(config["gpu"])
    return tune.PlacementGroupFactory([bundle])


# --------------------------------------------------------------------------------------------- progress view


class ProgressView:
    """Ray Tune callback printing one line per trial event: running / done / failed and the best IoU so far.

    Holds only plain values (Ray pickles it into the experiment for `--resume`); it prints to stdout.
    """

    def __init__(self, store_root: str, total: int):
        self.store_root = store_root
        self.total = total
        self._reset()

    def _reset(self) -> None:
        self.t0 = _LAUNCH_T0.setdefault(self.store_root, time.monotonic())  # one clock per launch, all experiments
        self.running: set[str] = set()
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.stopped: set[str] = set()
        self.best: tuple[float, str] | None = None

    def as_callback(self) -> Any:
        from ray import tune

        view = self

        class _Callback(tune.Callback):
            def setup(self, **info: Any) -> None:
                view.setup()

            def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                view.trial_started(trial)

            def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                view.trial_completed(trial)

            def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                view.trial_errored(trial)

            def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                view.trial_retried(trial)

        return _Callback()

    def setup(self) -> None:
        self._reset()
        for tid, record in TrialStore(self.store_root).results().items():  # finished in earlier launches
            self.done.add(tid)
            self._update_best(tid, record.get("metrics", {}))
        if self.done:
            self._say(f"{len(self.done)} of {self.total} trials finished so far")

    def trial_started(self, trial: Any) -> None:
        tid = _trial_id_of(trial)
        self.running.add(tid)
        earlier = "  (finished in an earlier launch: reporting its stored result)" if tid in self.done else ""
        self._say(f"start  {tid}  {_describe(trial)}{earlier}")

    def trial_completed(self, trial: Any) -> None:
        tid = _trial_id_of(trial)
        self.running.discard(tid)
        last = trial.last_result or {}
        if last.get("trial_done"):
            self.done.add(tid)
            self._update_best(tid, last)
            iou = headline_iou(last)
            shown = f"{HEADLINE} {iou:.4f}" if iou is not None else ""
            self._say(f"done   {tid}  {shown}  epochs {int(last.get('epochs_run', 0))}")
        else:
            self.stopped.add(tid)
            self._say(f"stopped {tid} early (scheduler) at epoch {int(last.get('epoch', -1)) + 1}")

    def trial_errored(self, trial: Any) -> None:
        tid = _trial_id_of(trial)
        self.running.discard(tid)
        self.failed.add(tid)
        error = TrialStore(self.store_root).last_error(tid) or _first_error_line(trial)
        self._say(f"FAILED {tid}: {error[:300]}")

    def trial_retried(self, trial: Any) -> None:
        tid = _trial_id_of(trial)
        self.running.discard(tid)
        error = TrialStore(self.store_root).last_error(tid) or "its worker died"
        self._say(f"retry  {tid} from its last checkpoint (max_failures): {error[:200]}")

    def _update_best(self, tid: str, metrics: dict[str, Any]) -> None:
        iou = headline_iou(metrics)
        if iou is not None and (self.best is None or iou > self.best[0]):
            self.best = (iou, tid)

    def _say(self, event: str) -> None:
        best = f"best {HEADLINE} {self.best[0]:.4f} ({self.best[1]})" if self.best else f"best {HEADLINE} -"
        status = (
            f"running {len(self.running)} | done {len(self.done)}/{self.total} | failed {len(self.failed)}"
            + (f" | stopped {len(self.stopped)}" if self.stopped else "")
            + f" | {best}"
        )
        print(f"[{time.monotonic() - self.t0:7.1f}s] {status} || {event}", file=sys.stdout, flush=True)


_LAUNCH_T0: dict[str, float] = {}


def _describe(trial: Any) -> str:
    try:
        config = unwrap_config(trial.config)
        sampled = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in (config.get("search") or {}).items())
        return f"{short_label(trial_spec_from_config(config))} {sampled}".rstrip()
    except Exception:
        return ""


def _trial_id_of(trial: Any) -> str:
    try:
        return trial_spec_from_config(trial.config).trial_id()
    except Exception:  # a config we cannot read still gets a line
        return str(trial.trial_id)


def _first_error_line(trial: Any) -> str:
    path = getattr(trial, "error_file", None) or ""
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        return lines[-1][:200] if lines else "(no error text)"
    except OSError:
        return "(error text not readable here)"


# --------------------------------------------------------------------------------------------- driver


@dataclass
class TrialOutcome:
    """One row of the final table."""

    planned: PlannedTrial
    spec: TrialSpec
    trial_id: str
    status: str  # FINISHED, FAILED, STOPPED (scheduler), NOT RUN
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    attempts: int = 0
    sampled: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepOutcome:
    sweep_name: str
    store_root: str
    experiment_paths: list[str]
    trials: list[TrialOutcome]
    tracking_uri: str | None = None
    interrupted: bool = False

    def count(self, status: str) -> int:
        return sum(1 for t in self.trials if t.status == status)

    @property
    def ok(self) -> bool:
        return all(t.status in ("FINISHED", "STOPPED") for t in self.trials)


def sweep_id(sweep: SweepSpec, the_plan: SweepPlan) -> str:
    """Stable across launches of the same sweep: its name, its trials and its search settings."""
    search = sweep.search.model_dump(mode="json") if sweep.search else None
    blob = json.dumps({"name": sweep.name, "trials": sorted(t.trial_id for t in the_plan.trials), "search": search})
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def run_sweep(
    sweep: SweepSpec,
    *,
    address: str | None = None,
    resume: bool = False,
    storage_path: str | None = None,
    tracking_uri: str | None = None,
    max_concurrent_trials: int | None = None,
    num_cpus: int | None = None,
    retry_failed: bool | None = None,
    workdir: Path | None = None,
    verbose: bool = False,
    out: TextIO | None = None,
) -> SweepOutcome:
    """Run (or, with resume, finish) a sweep on Ray Tune and return one outcome per trial.

    Uses the Ray already initialised in this process if any (tests, notebooks), else starts a local Ray or joins
    `address` ("auto", "ray://head:10001"), and shuts down only what it started. Progress lines go to stdout,
    the start line and the final table to `out`.
    """
    import ray

    out = out or sys.stdout
    workdir = (workdir or Path.cwd()).resolve()
    the_plan = plan(sweep)
    root = storage_root(resolve_storage_path(sweep, storage_path), sweep.name, workdir)
    store = TrialStore(root)
    sid = sweep_id(sweep, the_plan)
    _check_manifest(store, sweep, the_plan, sid, resume)

    started_ray = False
    if not ray.is_initialized():
        _init_ray(address, num_cpus or sweep.run.num_cpus, sweep.run.num_gpus, verbose)
        started_ray = True
    tracker = None
    try:
        trials = the_plan.trials
        alive = [n for n in ray.nodes() if n.get("Alive")]
        if len(alive) > 1 and "://" not in root:
            print(f"note: {len(alive)} Ray nodes: {root} must be a filesystem that every node mounts (else use a URI)", file=out)
        if ray.cluster_resources().get("GPU", 0) <= 0 and any(t.resources.gpu > 0 for t in trials):
            print("the Ray cluster has no GPUs: trials ask for 0 GPUs and run on CPUs", file=out)
            trials = without_gpus(trials)
        backbones, datasets = resolved_entries(sweep, trials)
        target, tracker = _start_tracking(sweep, the_plan, sid, tracking_uri, workdir, resume, out)
        ctx = TrialContext(
            store, backbones, datasets, sweep.run.checkpoint_every, sweep.run.checkpoint_min_interval_s, target
        )
        store.write_json(MANIFEST, _manifest(sweep, the_plan, sid))
        print(
            f"sweep '{sweep.name}': {the_plan.num_trials} "
            + ("grid points (Optuna search per point)" if sweep.search else "trials")
            + f"; storage {root}"
            + (f"; MLflow {target.uri} experiment '{target.experiment}'" if target else "; MLflow off"),
            file=out,
            flush=True,
        )
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our ProgressView replaces Ray's tables
        # snapshots forced by CheckpointConfig(num_to_keep) are what keeps --resume close to where it stopped
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        run = _run_grid if sweep.search is None else _run_search
        with _quiet_ray_logs(verbose):
            paths, interrupted = run(sweep, trials, ctx, root, resume, max_concurrent_trials, retry_failed, out)
        outcome = collect_outcome(sweep, the_plan, store, paths)
        outcome.tracking_uri = target.uri if target else None
        outcome.interrupted = interrupted
        write_results_csv(store, outcome)
        if tracker is not None:
            tracker.reconcile(_mlflow_statuses(outcome))
            tracker.finish("KILLED" if interrupted else "FINISHED" if outcome.ok else "FAILED")
            tracker = None
        print(format_outcome(outcome), file=out, flush=True)
        if interrupted:
            print(f"interrupted: finish it with `vfm-ablate run {sweep.source} --resume`", file=out, flush=True)
        return outcome
    except BaseException as err:
        if tracker is not None:
            tracker.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        if started_ray:
            ray.shutdown()


@contextmanager
def _quiet_ray_logs(verbose: bool) -> Iterator[None]:
    """Ray Tune logs every trial error with its full traceback and its own summaries; the progress view and the
    result table already say which trial failed and why (full tracebacks: trials/<id>/attempts, MLflow)."""
    import logging

    if verbose:
        yield
        return
    # only the two that repeat trial errors; warnings (e.g. "insufficient resources" on a cluster) stay visible
    loggers = {name: logging.getLogger(name) for name in ("ray.tune.execution.tune_controller", "ray.tune.tune")}
    levels = {name: lg.level for name, lg in loggers.items()}
    for lg in loggers.values():
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, lg in loggers.items():
            lg.setLevel(levels[name])


def _init_ray(address: str | None, num_cpus: int | None, num_gpus: int | None, verbose: bool) -> None:
    import logging

    import ray

    kwargs: dict[str, Any] = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.WARNING}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, **kwargs)


def _manifest(sweep: SweepSpec, the_plan: SweepPlan, sid: str) -> dict[str, Any]:
    return {
        "name": sweep.name,
        "sweep_id": sid,
        "source": sweep.source,
        "mode": "search" if sweep.search else "grid",
        "trial_ids": [t.trial_id for t in the_plan.trials],
    }


def _check_manifest(store: TrialStore, sweep: SweepSpec, the_plan: SweepPlan, sid: str, resume: bool) -> None:
    """A fresh run never mixes into an old experiment; a resume only continues the same sweep."""
    old = store.read_json(MANIFEST)
    if old is None:
        return
    if not resume:
        raise ConfigError(
            f"{store.root} already holds sweep '{old.get('name')}' (from {old.get('source')}): "
            "add --resume to finish it, or choose another --storage-path (or delete that folder) to start over"
        )
    if old.get("sweep_id") != sid:
        before, now = set(old.get("trial_ids", [])), {t.trial_id for t in the_plan.trials}
        raise ConfigError(
            f"{sweep.source}: the sweep changed since it was started in {store.root} "
            f"({len(now - before)} trials added, {len(before - now)} removed, or its search settings changed); "
            "--resume only finishes the same sweep: run the changed file with another name or --storage-path"
        )


def _start_tracking(
    sweep: SweepSpec, the_plan: SweepPlan, sid: str, uri: str | None, workdir: Path, resume: bool, out: TextIO
) -> tuple[TrackingTarget | None, Any | None]:
    if not sweep.tracking.enabled:
        return None, None
    from .tracking import SweepTracker, default_tracking_uri

    uri = uri or sweep.tracking.uri or os.environ.get(TRACKING_URI_ENV) or default_tracking_uri(workdir)
    experiment = sweep.experiment_name
    tracker = SweepTracker(uri, experiment, sweep.name, sid)
    params = {
        "sweep.name": sweep.name,
        "sweep.source": sweep.source,
        "sweep.mode": "search" if sweep.search else "grid",
        "sweep.trials": str(the_plan.num_trials),
        "sweep.collapsed": str(the_plan.collapsed),
    }
    parent = tracker.start(params, {"vfm.resume": str(resume).lower()})
    return TrackingTarget(uri, experiment, parent, sid), tracker


def _tune_config_common(sweep: SweepSpec, max_concurrent: int | None, dirname: Callable[[Any], str]) -> dict[str, Any]:
    return {
        "max_concurrent_trials": max_concurrent or sweep.run.max_concurrent_trials,
        "trial_dirname_creator": dirname,
        "trial_name_creator": dirname,
        "reuse_actors": True,  # no process start + torch import per trial (see benchmarks/bench_ray_overhead.py)
    }


def _run_config(sweep: SweepSpec, root: str, name: str, view: ProgressView) -> Any:
    from ray import tune

    return tune.RunConfig(
        name=name,
        storage_path=root,
        verbose=0,
        callbacks=[view.as_callback()],
        failure_config=tune.FailureConfig(max_failures=sweep.run.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=sweep.run.keep_checkpoints),
    )


def _fit(
    make_tuner: Callable[[], Any],
    path: str,
    trainable: Any,
    resume: bool,
    resume_errored: bool,
    expected: int | None,
    out: TextIO,
) -> bool:
    """Restore the experiment at `path` when resuming and it exists, else start it; True if it was interrupted.

    Ray Tune returns normally from fit() after a Ctrl-C (having saved its state), so "interrupted" is read
    from the experiment: trials not yet terminated, or (grid) fewer trials than planned.
    """
    from ray import tune

    if resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=resume_errored)
    else:
        if resume:
            print(f"nothing to resume at {path}: starting it", file=out, flush=True)
        tuner = make_tuner()
    tuner.fit()
    trials = tune.ExperimentAnalysis(path).trials
    unfinished = [t for t in trials if t.status not in ("TERMINATED", "ERROR")]
    return bool(unfinished) or (expected is not None and len(trials) < expected)


def _grid_dirname(trial: Any) -> str:
    return trial_spec_from_config(trial.config).trial_id()


def _search_dirname(trial: Any) -> str:
    return f"{trial_spec_from_config(trial.config).trial_id()}_{trial.trial_id.rsplit('_', 1)[-1]}"


def _config_of(t: PlannedTrial) -> dict[str, Any]:
    return {"spec": t.spec.model_dump(mode="json"), "cpu": t.resources.cpu, "gpu": t.resources.gpu}


def _run_grid(
    sweep: SweepSpec,
    trials: list[PlannedTrial],
    ctx: TrialContext,
    root: str,
    resume: bool,
    max_concurrent: int | None,
    retry_failed: bool | None,
    out: TextIO,
) -> tuple[list[str], bool]:
    from ray import tune

    trainable = make_trainable(ctx)
    view = ProgressView(root, len(trials))

    def make_tuner() -> Any:
        return tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search([_config_of(t) for t in trials])},
            tune_config=tune.TuneConfig(**_tune_config_common(sweep, max_concurrent, _grid_dirname)),
            run_config=_run_config(sweep, root, GRID_EXPERIMENT, view),
        )

    path = f"{root}/{GRID_EXPERIMENT}"
    interrupted = _fit(make_tuner, path, trainable, resume, _resume_errored(sweep, retry_failed), len(trials), out)
    return [path], interrupted


def _run_search(
    sweep: SweepSpec,
    points: list[PlannedTrial],
    ctx: TrialContext,
    root: str,
    resume: bool,
    max_concurrent: int | None,
    retry_failed: bool | None,
    out: TextIO,
) -> tuple[list[str], bool]:
    """One Optuna search (+ ASHA) per grid point, one after the other; each is its own resumable experiment."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    search = sweep.search
    assert search is not None
    trainable = make_trainable(ctx)
    paths = []
    total = sum(search.num_samples if p.search_space else 1 for p in points)
    view = ProgressView(root, total)
    for index, point in enumerate(points):
        name = f"search-{point.trial_id}"
        space = {k: d.to_tune() for k, d in point.search_space.items()}

        def make_tuner(point: PlannedTrial = point, space: dict[str, Any] = space, index: int = index, name: str = name) -> Any:
            common = _tune_config_common(sweep, max_concurrent, _search_dirname)
            if not space:  # nothing to search at this grid point (e.g. only LoRA settings searched, regime frozen)
                return tune.Tuner(
                    trainable,
                    param_space=_config_of(point),
                    tune_config=tune.TuneConfig(num_samples=1, **common),
                    run_config=_run_config(sweep, root, name, view),
                )
            scheduler = None
            if search.asha.enabled:
                scheduler = ASHAScheduler(
                    time_attr="training_iteration",
                    max_t=point.spec.optim.max_epochs + 1,  # + the final (test) report, which must not be cut
                    grace_period=search.asha.grace_period,
                    reduction_factor=search.asha.reduction_factor,
                    brackets=search.asha.brackets,
                )
            return tune.Tuner(
                trainable,
                param_space={**_config_of(point), "search": space},
                tune_config=tune.TuneConfig(
                    metric=search.metric,
                    mode=search.mode,
                    num_samples=search.num_samples,
                    search_alg=OptunaSearch(seed=search.seed + index),
                    scheduler=scheduler,
                    **common,
                ),
                run_config=_run_config(sweep, root, name, view),
            )

        print(f"grid point {index + 1}/{len(points)}: {short_label(point.spec)}", file=out, flush=True)
        path = f"{root}/{name}"
        paths.append(path)
        expected = search.num_samples if space else 1
        if _fit(make_tuner, path, trainable, resume, _resume_errored(sweep, retry_failed), expected, out):
            return paths, True
    return paths, False


def _resume_errored(sweep: SweepSpec, retry_failed: bool | None) -> bool:
    return sweep.run.resume_errored if retry_failed is None else retry_failed


# --------------------------------------------------------------------------------------------- results


def collect_outcome(sweep: SweepSpec, the_plan: SweepPlan, store: TrialStore, paths: list[str]) -> SweepOutcome:
    """One row per trial Ray ran (per planned trial in grid mode), with the durable record's metrics."""
    from ray import tune

    results = store.results()
    rows: list[TrialOutcome] = []
    by_point = {t.trial_id: t for t in the_plan.trials}
    seen: set[str] = set()
    for path in paths:
        if not tune.Tuner.can_restore(path):
            continue
        grid = tune.ExperimentAnalysis(path)
        for trial in grid.trials:
            config = unwrap_config(trial.config)
            spec = trial_spec_from_config(config)
            tid = spec.trial_id()
            if tid in seen:
                continue
            seen.add(tid)
            point = by_point.get(tid) or by_point.get(TrialSpec.model_validate(config["spec"]).trial_id())
            record = results.get(tid)
            last = trial.last_result or {}
            if record is not None:
                status, metrics, error = "FINISHED", record["metrics"], None
            elif trial.status == "ERROR":
                status, metrics, error = "FAILED", dict(last), store.last_error(tid) or _first_error_line(trial)
            elif trial.status == "TERMINATED":
                status, metrics, error = "STOPPED", dict(last), None
            else:
                status, metrics, error = "NOT RUN", dict(last), None
            rows.append(
                TrialOutcome(
                    planned=point,
                    spec=spec,
                    trial_id=tid,
                    status=status,
                    metrics=metrics,
                    error=error,
                    attempts=len(store.attempts(tid)),
                    sampled=dict(config.get("search") or {}),
                )
            )
    if sweep.search is None:  # planned trials Ray never created (driver stopped early) still get a row
        for t in the_plan.trials:
            if t.trial_id not in seen:
                rows.append(TrialOutcome(planned=t, spec=t.spec, trial_id=t.trial_id, status="NOT RUN"))
    order = {t.trial_id: i for i, t in enumerate(the_plan.trials)}
    rows.sort(key=lambda row: order.get(row.planned.trial_id, len(order)))  # the sweep file's order (stable)
    return SweepOutcome(sweep.name, store.root, paths, rows)


def _mlflow_statuses(outcome: SweepOutcome) -> dict[str, str]:
    status = {"FINISHED": "FINISHED", "FAILED": "FAILED", "STOPPED": "KILLED"}
    return {t.trial_id: status[t.status] for t in outcome.trials if t.status in status}


def outcome_rows(outcome: SweepOutcome) -> list[dict[str, str]]:
    rows = []
    for t in outcome.trials:
        label = PlannedTrial(spec=t.spec, trial_id=t.trial_id, resources=t.planned.resources).label()
        iou = headline_iou(t.metrics)
        row = {
            **label,
            **{k: f"{float(v):.3g}" for k, v in t.sampled.items()},
            "status": t.status,
            HEADLINE: f"{iou:.4f}" if iou is not None and t.status == "FINISHED" else "-",
            "pooled": f"{float(t.metrics['pooled_iou_fg']):.4f}" if "pooled_iou_fg" in t.metrics else "-",
            "epochs": str(int(t.metrics["epochs_run"])) if "epochs_run" in t.metrics else "-",
            "attempts": str(t.attempts),
        }
        if t.error:
            row["error"] = t.error[:100]
        rows.append(row)
    return rows


def format_outcome(outcome: SweepOutcome) -> str:
    rows = outcome_rows(outcome)
    sampled = sorted({k for t in outcome.trials for k in t.sampled})
    label = ["id", "backbone", "regime", "rank", "train", "sampling", "seed"]
    rest = [c for c in dict.fromkeys(k for r in rows for k in r) if c not in label and c not in sampled]
    columns = [*label, *sampled, *rest]
    rows = [{c: r.get(c, "-") for c in columns} for r in rows]
    counts = ", ".join(
        f"{outcome.count(s)} {s.lower()}" for s in ("FINISHED", "FAILED", "STOPPED", "NOT RUN") if outcome.count(s)
    )
    return "\n".join(
        [
            f"results of sweep '{outcome.sweep_name}': {counts}",
            f"({HEADLINE}: macro mean over test datasets, or the single dataset's; pooled: pixel-pooled over them)",
            format_table(rows, columns),
            f"every metric: {outcome.store_root}/{RESULTS_CSV}; trial outputs: {outcome.store_root}/trials/<id>/outputs",
        ]
    )


def write_results_csv(store: TrialStore, outcome: SweepOutcome) -> None:
    keys = sorted({k for t in outcome.trials for k, v in t.metrics.items() if isinstance(v, (int, float))})
    buf = io.StringIO()
    writer = csv.writer(buf)
    label_cols = ["id", "backbone", "regime", "rank", "train", "sampling", "seed"]
    sampled = sorted({k for t in outcome.trials for k in t.sampled})
    writer.writerow([*label_cols, *sampled, "status", "attempts", *keys, "error"])
    for t, row in zip(outcome.trials, outcome_rows(outcome)):
        writer.writerow(
            [row[c] for c in label_cols]
            + [t.sampled.get(k, "") for k in sampled]
            + [t.status, t.attempts]
            + [t.metrics.get(k, "") for k in keys]
            + [t.error or ""]
        )
    store.write_text(RESULTS_CSV, buf.getvalue())
