"""Run a sweep on Ray Tune: start or join Ray, guard the manifest, build or restore the Tuner (grid or search mode),
track the launch in MLflow, collect the results.
One module on purpose: it is the launch's steps in their order; each step's work lives in its own module
(inputs, resume/, capacity, ray_session, trainable, outcome).

Layout under the storage path (a local folder, a shared filesystem path or a URI such as s3://bucket/x):

    <storage>/<sweep name>/tune/               Ray Tune's experiment (grid mode): state, per-trial checkpoints
    <storage>/<sweep name>/search-<point id>/  one Ray Tune experiment per grid point (search mode)
    <storage>/<sweep name>/sweep.json          the sweep's manifest: name, sweep id, trial ids (checked on --resume),
                                               execution id (made on the first start, kept by every resume: the
                                               key of this execution's MLflow runs)
    <storage>/<sweep name>/trials/<trial id>/  the trial's durable record, written by the trial itself:
        attempts/<n>.json   one file per start (node, host, pid, start/end time, resumed or not, status, error)
        outputs/            run_trial's output folder (metrics.json, lora_targets.json, overlays, config.yaml)
        result.json         written once the trial finished; a trial that finds it never trains again
    <storage>/<sweep name>/features/           frozen backbone features, shared by every trial (sweep/feature_store)
    <storage>/<sweep name>/results.csv         the final table, every metric

Ray's own experiment state is saved only every few seconds, so after a SIGKILL of the driver it may still call a
finished trial "running"; the trial's `result.json` is what guarantees that `--resume` never trains it twice.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..config import TrialSpec
from .capacity import check_local, local_node, note_cluster
from .cost.estimate import with_gpu_shares
from .cost.packing import Node
from .feature_store import SweepFeatureStore
from .inputs import check_inputs, check_ready
from .outcome import (
    SweepOutcome,
    collect_outcome,
    end_tags,
    format_outcome,
    mlflow_statuses,
    publish_summary,
    test_metrics,
    where_to_look,
    write_results_csv,
)
from .phase_board import start_board
from .plan import PlannedTrial, SweepPlan, without_gpus
from .progress import ProgressView
from .ray_session import check_address, init_ray, quiet_ray_logs
from .resume.changed import check_unchanged_inputs, start_over
from .resume.identity import input_identities
from .resume.manifest import MANIFEST, check_manifest, execution_id, manifest, sweep_id
from .spec import SweepSpec
from .store import TrialStore, check_storage_root, resolve_storage_path, storage_root
from .trainable import GRID_KEY, SEARCH_KEY, TrackingTarget, TrialContext, decode_config, encode_config, make_trainable

GRID_EXPERIMENT = "tune"


def run_sweep(
    the_plan: SweepPlan,
    *,
    address: str | None = None,
    resume: bool = False,
    storage_path: str | None = None,
    tracking_uri: str | None = None,
    max_concurrent_trials: int | None = None,
    num_cpus: int | None = None,
    retry_failed: bool | None = None,
    rerun_changed: bool = False,
    workdir: Path | None = None,
    verbose: bool = False,
    progress_interval_s: float | None = None,
    out: TextIO | None = None,
    gpu_shares: dict[str, float] | None = None,
) -> SweepOutcome:
    """Run (or, with resume, finish) a sweep on Ray Tune and return one outcome per trial.

    Everything a user can get wrong is checked before Ray starts: the inputs' readiness (offline with a dataset
    or weight missing: one error naming them all and the fetch command), the storage path, every local input
    (sweep/inputs.py), the inputs of trials already run against today's entries (with `rerun_changed`, those
    trials start over), the tracking store. Uses the Ray already initialised in this process if any (tests,
    notebooks), else starts a local Ray or joins `address` ("auto", "ray://head:10001"), and shuts down only what
    it started. Progress lines go to stdout (a live table on a terminal; else at most one epoch line per trial
    every `progress_interval_s`, default the sweep's `run.progress_interval_s`), the start line, the final table
    and where to look to `out`. `gpu_shares` (trial id -> share, from a calibration's measured memory) replaces
    the trials' GPU asks.
    """
    import ray

    out = out or sys.stdout
    sweep = the_plan.sweep
    workdir = (workdir or Path.cwd()).resolve()
    if address and not ray.is_initialized():
        check_address(address)  # seconds, interruptible: Ray's own connect waits minutes where nothing answers
    if gpu_shares:  # measured memory (a calibration file) instead of the backbone entries' guessed shares
        the_plan = the_plan.with_trials(with_gpu_shares(the_plan.trials, gpu_shares))
    check_ready(the_plan, out)  # offline with a dataset or weight missing: stop before Ray starts
    root = storage_root(resolve_storage_path(sweep, storage_path), sweep.name, workdir)
    check_storage_root(root)
    store = TrialStore(root)
    sid = sweep_id(the_plan)
    old_manifest = check_manifest(store, the_plan, sid, resume)
    if resume:
        store.check_records()  # a damaged result.json names itself here, not inside a trial
    execution = execution_id(old_manifest)
    inputs = check_inputs(the_plan.specs, the_plan.backbones, the_plan.datasets, sweep.source)
    identities = input_identities(inputs.backbones, inputs.datasets, inputs.pretrained)
    changed, stale = check_unchanged_inputs(store, the_plan, identities, old_manifest, rerun_changed, out)
    uri = _tracking_uri(sweep, tracking_uri, workdir)
    if uri is not None:
        from ..tracking.store import check_tracking_store

        check_tracking_store(uri)
    if resume:
        store.close_all_running_attempts("its launch ended without closing it (killed)")
    if stale:
        experiments: dict[str, TrialSpec | None] = {GRID_EXPERIMENT: None}
        if sweep.search is not None:
            experiments = {f"search-{t.trial_id}": t.spec for t in the_plan.trials}
        start_over(store, the_plan, stale, changed, experiments, uri, execution, out)

    started_ray = False
    if not ray.is_initialized():
        if address is None:  # this machine's own Ray: a trial that could never start is an error before it starts
            check_local(the_plan.trials, local_node(num_cpus or sweep.run.num_cpus, sweep.run.num_gpus), sweep.source)
        init_ray(address, num_cpus or sweep.run.num_cpus, sweep.run.num_gpus, verbose)
        started_ray = True
    tracker = None
    try:
        trials = the_plan.trials
        alive = [n for n in ray.nodes() if n.get("Alive")]
        nodes = [Node(float(n["Resources"].get("CPU", 0)), int(n["Resources"].get("GPU", 0))) for n in alive]
        if address is None and len(alive) == 1:
            check_local(trials, nodes[0], sweep.source)
        else:
            note_cluster(trials, nodes, out)
        if len(alive) > 1 and "://" not in root:
            print(
                f"note: {len(alive)} Ray nodes: {root} must be a filesystem that every node mounts (else use a URI)",
                file=out,
            )
        if ray.cluster_resources().get("GPU", 0) <= 0 and any(t.resources.gpu > 0 for t in trials):
            if address is None and len(alive) == 1:
                print("the Ray cluster has no GPUs: trials ask for 0 GPUs and run on CPUs", file=out)
                trials = without_gpus(trials)
            else:  # a cluster whose autoscaler adds GPU nodes on demand (cluster.yaml starts with none)
                print(
                    "note: the Ray cluster has no GPUs yet: trials keep their GPU asks and wait for GPU nodes "
                    "(the autoscaler adds them on demand); set `resources: {gpu: 0}` to run on CPUs",
                    file=out,
                )
        with quiet_ray_logs(verbose):
            target, tracker = _start_tracking(sweep, the_plan, sid, execution, uri, resume)
        ctx = TrialContext(
            store,
            inputs.backbones,
            inputs.datasets,
            sweep.run.checkpoint_every,
            sweep.run.checkpoint_min_interval_s,
            target,
            identities,
            feature_store=SweepFeatureStore(root),
            phase_board=start_board(),
        )
        store.write_json(MANIFEST, manifest(the_plan, sid, execution, identities))
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
        launch = Launch(
            sweep=sweep,
            trials=trials,
            ctx=ctx,
            root=root,
            resume=resume,
            resume_errored=sweep.run.resume_errored if retry_failed is None else retry_failed,
            max_concurrent=max_concurrent_trials,
            interval_s=sweep.run.progress_interval_s if progress_interval_s is None else progress_interval_s,
            out=out,
            verbose=verbose,
        )
        with quiet_ray_logs(verbose):
            paths, interrupted = run(launch)
        outcome = collect_outcome(the_plan, store, paths)
        for t in outcome.trials:  # a stopped trial's actor can end before the trial's thread records its stop
            if t.status == "STOPPED":
                store.close_running_attempts(t.trial_id, t.shown_status)
        outcome.tracking_uri = target.uri if target else None
        outcome.interrupted = interrupted
        write_results_csv(store, outcome)
        if tracker is not None:
            tracker.reconcile(mlflow_statuses(outcome))
            tracker.tag_trials(end_tags(outcome))
            publish_summary(tracker, outcome, store)
            tracker.finish("KILLED" if interrupted else "FINISHED" if outcome.ok else "FAILED")
            tracker = None
        print(format_outcome(outcome), file=out, flush=True)
        if target is not None:
            print(where_to_look(sweep.source, target), file=out, flush=True)
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


def _tracking_uri(sweep: SweepSpec, flag: str | None, workdir: Path) -> str | None:
    if not sweep.tracking.enabled:
        return None
    from ..tracking.store import resolve_tracking_uri

    return resolve_tracking_uri(flag, sweep.tracking.uri, workdir)


def _start_tracking(
    sweep: SweepSpec, the_plan: SweepPlan, sid: str, execution: str, uri: str | None, resume: bool
) -> tuple[TrackingTarget | None, Any | None]:
    if uri is None:
        return None, None
    from ..tracking.runs import SweepTracker
    from ..tracking.tags import STOPPED_BY_TAG
    from ..tracking.ui import set_up_experiment

    experiment = sweep.experiment_name
    tracker = SweepTracker(uri, experiment, sweep.name, sid, execution)
    params = {
        "sweep.name": sweep.name,
        "sweep.source": sweep.source,
        "sweep.mode": "search" if sweep.search else "grid",
        "sweep.trials": str(the_plan.num_trials),
        "sweep.collapsed": str(the_plan.collapsed),
    }
    sweep_run = tracker.start(params, {"vfm.resume": str(resume).lower()})
    assert tracker.experiment_id is not None
    started = time.strftime("%Y-%m-%d %H:%M")
    settings = list(the_plan.labels.ui_columns)
    if sweep.search is not None and sweep.search.asha.enabled:
        settings.append(("tags", STOPPED_BY_TAG))  # `ASHA at epoch 3` beside the runs ASHA stopped
    view = set_up_experiment(
        uri,
        tracker.experiment_id,
        execution,
        f"{sweep.name}: trials ({started}, {execution})",
        test_metrics(the_plan),
        settings,
        name_chars=max(len(t.label.run_name) for t in the_plan.trials) + (24 if sweep.search else 0),  # + samples
    )
    target = TrackingTarget(uri, experiment, sweep_run, sid, execution, tracker.launch, tracker.experiment_id, view)
    return target, tracker


@dataclass(frozen=True)
class Launch:
    """What one launch runs, and how: handed to the grid or search runner whole."""

    sweep: SweepSpec
    trials: list[PlannedTrial]
    ctx: TrialContext
    root: str
    resume: bool
    resume_errored: bool  # --resume also retries trials that failed
    max_concurrent: int | None
    interval_s: float  # progress lines without a terminal
    out: TextIO
    verbose: bool = False  # the libraries' own log lines (Ray, MLflow, Optuna) in the terminal too

    def tune_config(self, dirname: Callable[[Any], str], **settings: Any) -> Any:
        from ray import tune

        return tune.TuneConfig(
            max_concurrent_trials=self.max_concurrent or self.sweep.run.max_concurrent_trials,
            trial_dirname_creator=dirname,
            trial_name_creator=dirname,
            reuse_actors=True,  # no process start + torch import per trial (see benchmarks/bench_ray_overhead.py)
            **settings,
        )

    def view(self, total: int, bounds: list[tuple[int, int]]) -> ProgressView:
        """The live view of this launch's trials, showing the phases they post to the launch's board."""
        view = ProgressView(self.root, total, self.interval_s, bounds=bounds, scheduler=self.sweep.early_stopper)
        return view.attach_board(self.ctx.phase_board)

    def run_config(self, name: str, view: ProgressView) -> Any:
        from ray import tune

        return tune.RunConfig(
            name=name,
            storage_path=self.root,
            verbose=0,
            callbacks=[view.as_callback()],
            failure_config=tune.FailureConfig(max_failures=self.sweep.run.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=self.sweep.run.keep_checkpoints),
        )

    def fit(self, make_tuner: Callable[[], Any], path: str, trainable: Any, expected: int | None) -> bool:
        """Restore the experiment at `path` when resuming and it exists, else start it; True if it was interrupted.

        Ray Tune returns normally from fit() after a Ctrl-C (having saved its state), so "interrupted" is read
        from the experiment: trials not yet terminated, or (grid) fewer trials than planned.
        """
        from ray import tune

        if self.resume and tune.Tuner.can_restore(path):
            tuner = tune.Tuner.restore(
                path, trainable=trainable, resume_unfinished=True, resume_errored=self.resume_errored
            )
        else:
            if self.resume:
                print(f"nothing to resume at {path}: starting it", file=self.out, flush=True)
            tuner = make_tuner()
        tuner.fit()
        trials = tune.ExperimentAnalysis(path).trials
        unfinished = [t for t in trials if t.status not in ("TERMINATED", "ERROR")]
        return bool(unfinished) or (expected is not None and len(trials) < expected)


def _bounds(t: PlannedTrial) -> tuple[int, int]:
    """(max_epochs, patience): what a trial not started yet may take."""
    return t.spec.optim.max_epochs, t.spec.optim.patience


def _grid_dirname(trial: Any) -> str:
    return decode_config(trial.config).trial_id


def _search_dirname(trial: Any) -> str:
    return f"{decode_config(trial.config).trial_id}_{trial.trial_id.rsplit('_', 1)[-1]}"


def _run_grid(launch: Launch) -> tuple[list[str], bool]:
    """All trials in one Ray Tune experiment (a grid search over their encoded configs)."""
    from ray import tune

    trainable = make_trainable(launch.ctx)
    view = launch.view(len(launch.trials), [_bounds(t) for t in launch.trials])

    def make_tuner() -> Any:
        return tune.Tuner(
            trainable,
            param_space={GRID_KEY: tune.grid_search([encode_config(t) for t in launch.trials])},
            tune_config=launch.tune_config(_grid_dirname),
            run_config=launch.run_config(GRID_EXPERIMENT, view),
        )

    path = f"{launch.root}/{GRID_EXPERIMENT}"
    return [path], launch.fit(make_tuner, path, trainable, len(launch.trials))


def _run_search(launch: Launch) -> tuple[list[str], bool]:
    """One Optuna search (+ ASHA) per grid point, one after the other; each is its own resumable experiment."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    search = launch.sweep.search
    assert search is not None
    if not launch.verbose:  # "A new study created in memory with name: ..." once per grid point
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    trainable = make_trainable(launch.ctx)
    paths = []
    points = launch.trials
    total = sum(search.num_samples if p.search_space else 1 for p in points)
    bounds = [_bounds(p) for p in points for _ in range(search.num_samples if p.search_space else 1)]
    view = launch.view(total, bounds)
    for index, point in enumerate(points):
        name = f"search-{point.trial_id}"
        space = {k: d.to_tune() for k, d in point.search_space.items()}

        def make_tuner(
            point: PlannedTrial = point, space: dict[str, Any] = space, index: int = index, name: str = name
        ) -> Any:
            if not space:  # nothing to search at this grid point (e.g. only LoRA settings searched, regime frozen)
                return tune.Tuner(
                    trainable,
                    param_space=encode_config(point),
                    tune_config=launch.tune_config(_search_dirname, num_samples=1),
                    run_config=launch.run_config(name, view),
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
                param_space={**encode_config(point), SEARCH_KEY: space},
                tune_config=launch.tune_config(
                    _search_dirname,
                    metric=search.metric,
                    mode=search.mode,
                    num_samples=search.num_samples,
                    search_alg=OptunaSearch(seed=search.seed + index),
                    scheduler=scheduler,
                ),
                run_config=launch.run_config(name, view),
            )

        what = point.label.short or point.trial_id  # (empty when only the searched values tell trials apart)
        print(f"grid point {index + 1}/{len(points)}: {what}", file=launch.out, flush=True)
        path = f"{launch.root}/{name}"
        paths.append(path)
        if launch.fit(make_tuner, path, trainable, search.num_samples if space else 1):
            return paths, True
    return paths, False
