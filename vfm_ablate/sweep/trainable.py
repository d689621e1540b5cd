"""The Ray Tune trainable around `trial.run_trial`: per-epoch reports and checkpoints, trial records, MLflow,
per-trial CPU/GPU bundles. Runs inside Ray workers; everything it needs arrives pickled in a `TrialContext`.

Both ends of the Ray config live here: `encode_config` (driver: a planned trial -> its param_space entry: id,
label, run name, early-stopping bounds, resources, the spec as JSON) and `decode_config`, the one function that
reads a config Ray hands back (driver: the live view, the result table, trial folders; worker: the trial to run).
The driver reads the id and label that travel with the config and never validates a spec; the worker validates
the spec once.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from ..config import TrialSpec
from ..data.entries import DatasetEntry
from ..errors import ConfigError
from ..models.registry import BackboneEntry
from ..overrides import set_dotted
from ..trial.phases import UPLOADING, Phase
from ..validation import validate
from .feature_store import SweepFeatureStore
from .labels import HEADLINE, headline_iou, sampled_text, trial_label
from .phase_board import PhasePoster
from .plan import PlannedTrial
from .resume.identity import INPUTS_ID_KEY, InputIdentities
from .store import TrialStore


@dataclass(frozen=True)
class TrackingTarget:
    """Where trials log (picklable: shipped to every trial)."""

    uri: str
    experiment: str
    sweep_run_id: str | None  # the execution's summary run
    sweep_id: str
    execution_id: str  # the key of this execution's runs (kept in the manifest across launches)
    launch: int = 1
    experiment_id: str = ""
    view_key: str | None = None  # the execution's saved view in the MLflow UI


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs besides its config; resolved once on the driver (absolute paths, inline entries)."""

    store: TrialStore
    backbones: dict[str, BackboneEntry]
    datasets: dict[str, DatasetEntry]
    checkpoint_every: int = 1
    checkpoint_min_interval_s: float = 0.0
    tracking: TrackingTarget | None = None
    identities: InputIdentities | None = None  # what the entries are (files included): each trial's inputs id
    feature_store: SweepFeatureStore | None = None  # frozen trials share features sweep-wide
    phase_board: Any = None  # the launch's phase board (sweep/phase_board): what each trial is doing, for the view


GRID_KEY = "trial"  # grid mode: param_space = {GRID_KEY: tune.grid_search([encoded trial, ...])}
SEARCH_KEY = "search"  # search mode: the values Optuna sampled, by dotted TrialSpec key


def encode_config(t: PlannedTrial) -> dict[str, Any]:
    """A planned trial as plain data in Ray's param_space."""
    return {
        "trial_id": t.trial_id,
        "label": t.label.short,
        "run_name": t.label.run_name,
        "max_epochs": t.spec.optim.max_epochs,
        "patience": t.spec.optim.patience,
        "cpu": t.resources.cpu,
        "gpu": t.resources.gpu,
        "spec": t.spec.model_dump(mode="json"),
    }


@dataclass(frozen=True)
class RayTrial:
    """A config Ray handed back, decoded: what the driver reads (id, label, bounds, resources) as plain values;
    the spec is validated only when asked for (the worker)."""

    trial_id: str
    point_id: str  # the planned trial (grid point) it belongs to: its own id in grid mode
    label: str
    run_name: str
    max_epochs: int
    patience: int
    cpu: float
    gpu: float
    sampled: dict[str, Any]
    spec_data: dict[str, Any]

    @cached_property
    def spec(self) -> TrialSpec:
        return validate(TrialSpec, self.spec_data, f"trial {self.trial_id}")


def decode_config(config: dict[str, Any]) -> RayTrial:
    """The one reader of a Ray config. Grid mode nests the trial under GRID_KEY; a search trial is its grid point
    plus the values Optuna sampled, so its id, label and spec include them (computed once per sample)."""
    own = config[GRID_KEY] if GRID_KEY in config else config
    sampled = {k: v.item() if hasattr(v, "item") else v for k, v in (own.get(SEARCH_KEY) or {}).items()}
    if "trial_id" not in own:  # a Ray experiment started by an earlier version (--resume): only spec, cpu, gpu
        spec = validate(TrialSpec, own["spec"], "a trial of an earlier version's Ray experiment")
        label = trial_label(spec, spec.trial_id())
        own = {**own, "trial_id": spec.trial_id(), "label": label.short, "run_name": label.run_name}
        own |= {"max_epochs": spec.optim.max_epochs, "patience": spec.optim.patience}
    trial = RayTrial(
        trial_id=own["trial_id"],
        point_id=own["trial_id"],
        label=own["label"],
        run_name=own["run_name"],
        max_epochs=int(own["max_epochs"]),
        patience=int(own["patience"]),
        cpu=float(own["cpu"]),
        gpu=float(own.get("gpu", 0.0)),
        sampled=sampled,
        spec_data=own["spec"],
    )
    if not sampled:
        return trial
    key = (trial.trial_id, tuple(sorted(sampled.items())))
    if key not in _SAMPLED:
        _SAMPLED[key] = _sampled_trial(trial, sampled)
    return _SAMPLED[key]


_SAMPLED: dict[tuple[str, tuple[tuple[str, Any], ...]], RayTrial] = {}  # (grid point id, samples) -> its trial


def _sampled_trial(point: RayTrial, values: dict[str, Any]) -> RayTrial:
    data = json.loads(json.dumps(point.spec_data))
    for key, value in values.items():
        set_dotted(data, key, value)
    spec = validate(TrialSpec, data, f"search sample {values} of grid point {point.trial_id}")
    text = sampled_text(values)
    trial = RayTrial(
        trial_id=spec.trial_id(),
        point_id=point.trial_id,
        label=" ".join(t for t in (point.label, text) if t),  # the grid point's varying settings, then samples
        run_name=" · ".join(t for t in (point.run_name, text) if t),
        max_epochs=spec.optim.max_epochs,
        patience=spec.optim.patience,
        cpu=point.cpu,
        gpu=point.gpu,
        sampled=values,
        spec_data=spec.model_dump(mode="json"),
    )
    trial.__dict__["spec"] = spec  # the cached_property, already validated
    return trial


class _TuneReporter:
    """run_trial's reporter inside a Ray trial: every epoch -> tune.report and MLflow; the training state goes
    with it every `every` epochs once `min_interval_s` have passed (a checkpoint of the study's head + optimiser
    is ~60 MB: every epoch would cost more than a short epoch itself). Phases go to the launch's phase board, never
    through tune.report (one report per epoch: ASHA's clock)."""

    def __init__(self, every: int, min_interval_s: float, tracker: Any | None, poster: PhasePoster | None = None):
        self.every = every
        self.min_interval_s = min_interval_s
        self.tracker = tracker
        self.poster = poster
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

    def phase(self, phase: Phase) -> None:
        if self.poster is not None:
            self.poster(phase)


def final_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """A finished trial's metrics with the headline IoU under its own name (one sortable column in the UI)."""
    iou = headline_iou(metrics)
    return {**metrics, HEADLINE: iou} if iou is not None else dict(metrics)


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

    from ..trial import run_trial

    trial = decode_config(config)
    spec, tid = trial.spec, trial.trial_id
    inputs_id = ctx.identities.trial_inputs_id(spec) if ctx.identities is not None else None
    done = ctx.store.result(tid)
    if done is not None:  # finished in an earlier launch whose driver died before Ray saved that
        if done.get(INPUTS_ID_KEY) not in (None, inputs_id):  # the driver moves such records aside first
            raise ConfigError(f"trial {tid} finished on other inputs ({done[INPUTS_ID_KEY]}, now {inputs_id})")
        ctx.store.close_running_attempts(tid, "the trial had finished; its launch ended before closing the record")
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
            "cpu": trial.cpu,
            "gpu": trial.gpu,
            INPUTS_ID_KEY: inputs_id,
        },
    )
    ctx.store.close_running_attempts(tid, "a later attempt of the trial started", keep=attempt)
    tracker = None
    poster = PhasePoster(ctx.phase_board, tid) if ctx.phase_board is not None else None
    reporter = _TuneReporter(ctx.checkpoint_every, ctx.checkpoint_min_interval_s, None, poster)
    out_dir = Path(tempfile.mkdtemp(prefix=f"vfm-{tid}-"))
    try:
        tracker = reporter.tracker = _open_tracker(ctx, trial, node_id, inputs_id)
        kwargs = {
            "reporter": reporter,
            "backbones": ctx.backbones,
            "datasets": ctx.datasets,
            "feature_store": ctx.feature_store,
        }
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                result = run_trial(spec, out_dir, resume_from=Path(folder), **kwargs)
        else:
            result = run_trial(spec, out_dir, **kwargs)
        reporter.phase(Phase(UPLOADING))
        ctx.store.upload_dir(out_dir, f"trials/{tid}/outputs")
        if tracker is not None:
            tracker.log_final(final_metrics(result.metrics))
            tracker.log_artifacts(str(out_dir))
            tracker.close("FINISHED")
        record = {
            "trial_id": tid,
            "spec": spec.model_dump(mode="json"),
            "metrics": result.metrics,
            "lora_targets": result.lora_targets,
            INPUTS_ID_KEY: inputs_id,
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


def _after_failure(
    ctx: TrialContext, tid: str, out_dir: Path, tracker: Any | None, status: str, err: BaseException
) -> None:
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


def _open_tracker(ctx: TrialContext, trial: RayTrial, node_id: str, inputs_id: str | None) -> Any | None:
    if ctx.tracking is None:
        return None
    from ..tracking.runs import TrialTracker
    from ..tracking.tags import ALIGNMENT_TAG, INPUTS_ID_TAG, NODE_ID_TAG, OUTPUTS_TAG, SPEC_TAG

    t, spec, tid = ctx.tracking, trial.spec, trial.trial_id
    entry = ctx.backbones[spec.backbone]
    tracker = TrialTracker(t.uri, t.experiment, t.sweep_run_id, t.sweep_id, tid, t.execution_id, t.launch)
    params = {
        **spec.flat_params(),
        "backbone.family": entry.family,
        "backbone.scale": entry.scale,
        "backbone.embed_dim": str(entry.embed_dim),
    }
    tags = {
        NODE_ID_TAG: node_id,
        OUTPUTS_TAG: f"{ctx.store.root}/trials/{tid}/outputs",
        SPEC_TAG: spec.model_dump_json(),  # what the report reads back into a TrialSpec
        ALIGNMENT_TAG: spec.alignment.label(),  # the method as one UI column
    }
    if inputs_id is not None:
        tags[INPUTS_ID_TAG] = inputs_id
    tracker.open(params, tags, run_name=trial.run_name)
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

    trial = decode_config(config)
    bundle = {"CPU": trial.cpu}
    if trial.gpu > 0:
        bundle["GPU"] = trial.gpu
    return tune.PlacementGroupFactory([bundle])
