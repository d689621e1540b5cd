"""Fit and evaluate one trial under the study's protocol. No Ray, no MLflow: runs from a notebook, the CLI or a Ray
trial.

`run_trial` reads top to bottom as its steps: data -> model (+ alignment modules) -> (resume) -> frozen: features
of every image -> fit (epochs, early stopping on the validation loss) -> test with the best-validation state ->
diagnostics -> write the output folder. Each step is a phase the reporter hears of (trial/phases.py).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..config import TrialSpec
from ..data.entries import DatasetEntry
from ..data.sampling import epoch_batches
from ..device import resolve_device
from ..errors import VfmAblateError
from ..metric_names import labelled_metric
from ..models.registry import BackboneEntry, get_entry
from ..models.segmenter import Segmenter, build_segmenter
from .alignment import AlignmentLoss, attach_alignment, estimate_feature_statistics
from .domain import diagnostic_items, domain_diagnostics, head_diagnostics
from .evaluate import evaluate
from .features import FeatureStore
from .forward import AlignFeatures, Forward, batch_loss, dice_loss, validation_loss
from .items import Item, TrainingItems, TrialData, load_trial_data
from .outputs import write_outputs, write_overlays
from .phases import (
    BUILDING,
    DIAGNOSTICS,
    EXTRACTING,
    LOADING,
    TESTING,
    TRAINING,
    VALIDATING,
    WRITING,
    Phase,
    Phases,
)
from .state import TrainState, load_training_state, save_training_state


class TrialReporter(Protocol):
    """Receives each epoch's metrics; calls `save_checkpoint(dir)` when it wants the training state on disk.

    A reporter may also have `phase(phase: Phase)` (`PhaseReporter`): then it hears every phase of the trial and the
    progress inside it, as often as the engine makes progress (every image, every step): it decides what to pass
    on, and must be cheap."""

    def epoch_end(self, epoch: int, metrics: dict[str, float], save_checkpoint: Callable[[Path], None]) -> None: ...


class PhaseReporter(Protocol):
    """The optional part of a reporter: what the trial is doing now (trial/phases.py)."""

    def phase(self, phase: Phase) -> None: ...


@dataclass
class TrialResult:
    metrics: dict[str, float]
    history: list[dict[str, float]]
    out_dir: Path
    lora_targets: list[str] = field(default_factory=list)


class NonFiniteLossError(VfmAblateError):
    """Training diverged (NaN/inf loss): the trial fails with this error instead of training on garbage; a user
    error (most often a learning rate too high), so the command line shows its message, not a traceback."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def run_trial(
    spec: TrialSpec,
    out_dir: str | Path,
    *,
    reporter: TrialReporter | None = None,
    resume_from: str | Path | None = None,
    backbones: dict[str, BackboneEntry] | None = None,
    datasets: dict[str, DatasetEntry] | None = None,
    feature_store: FeatureStore | None = None,
) -> TrialResult:
    """Train and evaluate one trial; `resume_from` is a folder written by `save_checkpoint` of an earlier run;
    `feature_store` shares frozen features beyond this trial (a sweep's store)."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(spec.device)
    entry = get_entry(spec.backbone, backbones)
    phases = Phases(reporter)

    phases(LOADING)
    data = load_trial_data(spec, entry, datasets)
    diag_items = diagnostic_items(spec, entry, data) if spec.diagnostics.enabled else None
    phases(BUILDING)
    seed_everything(spec.seed)
    model = build_segmenter(spec, entry).to(device)
    diag_names = list(diag_items.measured) if diag_items is not None else []
    attach_alignment(model, spec, list(dict.fromkeys([*data.own_images(spec), *diag_names])))
    optimiser = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=spec.optim.lr, weight_decay=spec.optim.weight_decay
    )
    fwd = Forward(model, device, spec, entry, feature_store)
    state = TrainState()
    if resume_from is not None:
        state = load_training_state(Path(resume_from), spec.trial_id(), model, optimiser)

    diag_metrics: dict[str, float] = {}
    if spec.diagnostics.enabled:
        if state.diag_frozen is None:  # before any step: a LoRA model with B = 0 is exactly the frozen backbone
            phases(DIAGNOSTICS)
            state.diag_frozen = domain_diagnostics(model, spec, entry, data.loaded, "frozen", out_dir)
        diag_metrics.update(state.diag_frozen)

    def save_checkpoint(folder: Path) -> None:
        save_training_state(folder, spec.trial_id(), model, optimiser, state)

    if fwd.caches_features and not state.done(spec.optim.max_epochs):
        every_image = _every_item(data)
        fwd.extract_all(every_image, phases.counter(EXTRACTING, len(every_image)))
    fit(spec, data, fwd, optimiser, state, reporter, save_checkpoint)

    if state.best_state is not None:
        model.load_trainable_state_dict(state.best_state)
    acc, preds = evaluate(fwd, data.test, spec.eval_native_resolution, phases.counter(TESTING, len(data.test)))
    write_overlays(out_dir, data.test, preds, spec.num_overlays)
    if spec.diagnostics.enabled:
        phases(DIAGNOSTICS)
        if spec.regime != "frozen":
            diag_metrics.update(domain_diagnostics(model, spec, entry, data.loaded, "adapted", out_dir))
        assert diag_items is not None
        diag_metrics.update(head_diagnostics(fwd, spec, data, diag_items, out_dir))

    phases(WRITING)
    metrics = trial_metrics(model, state, fwd, device, acc.metrics(), diag_metrics, time.perf_counter() - started)
    metrics.update({labelled_metric(name): float(k) for name, k in data.labelled_counts(spec).items()})
    write_outputs(out_dir, spec, entry, model, metrics, state.history, data.entries)
    return TrialResult(
        metrics=metrics, history=list(state.history), out_dir=out_dir, lora_targets=list(model.lora_targets)
    )


def _every_item(data: TrialData) -> list[Item]:
    """Every image the trial runs through its backbone: train, validation, unlabelled target, test."""
    train = [it for items in data.train for it in items]
    return [*train, *data.val, *(it for items in data.target for it in items), *data.test]


def fit(
    spec: TrialSpec,
    data: TrialData,
    fwd: Forward,
    optimiser: torch.optim.Optimizer,
    state: TrainState,
    reporter: TrialReporter | None,
    save_checkpoint: Callable[[Path], None],
) -> None:
    """Epochs until early stopping (patience on the validation loss) or max_epochs, from wherever `state` is."""
    phases = Phases(reporter)
    loss_fn = dice_loss()
    model = fwd.model
    own_images = data.own_images(spec)
    pools = data.batch_pools(spec)  # in spec.batch_datasets() order
    TrainingItems(dict(zip(spec.batch_datasets(), pools)), data.loaded)  # raises if a test image joined the batches
    sizes = [len(items) for items in pools]
    classifier = getattr(model.alignment, "classifier", None)
    align_loss = AlignmentLoss(spec, classifier) if spec.alignment.loss != "none" else None
    estimate_feature_statistics(fwd, own_images)  # frozen: the only estimate; LoRA / full: re-done every epoch
    while not state.done(spec.optim.max_epochs):
        epoch = state.epoch
        epoch_start = time.perf_counter()
        model.train()
        rng = np.random.default_rng([spec.seed, epoch])  # per-epoch stream: a resumed trial replays the same order
        batches = epoch_batches(sizes, spec.data.sampling, spec.optim.batch_size, rng, spec.data.weights)
        running, count, align_running, align_steps = 0.0, 0, 0.0, 0
        progress = phases.counter(TRAINING, len(batches), epoch + 1)
        for step, batch in enumerate(batches):
            if step:
                progress(step)  # steps done (the counter said 0 when it started)
            items = [pools[d][i] for d, i in batch]
            collected: AlignFeatures | None = [] if align_loss is not None else None
            dice = batch_loss(fwd, loss_fn, items, collected)
            extra = align_loss(collected, epoch, step, len(batches)) if align_loss is not None else None
            if dice is None and extra is None:
                continue  # natural sampling drew only unlabelled target images of one domain: nothing to learn
            loss = (dice if dice is not None else 0.0) + (extra if extra is not None else 0.0)
            if not torch.isfinite(loss):  # type: ignore[arg-type]
                raise NonFiniteLossError(
                    f"training diverged: loss became {float(loss.detach())} at epoch {epoch} (optim.lr="
                    f"{spec.optim.lr:g}); lower optim.lr"
                )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            optimiser.step()
            if dice is not None:
                labelled = sum(it.mask is not None for it in items)
                running += float(dice.detach()) * labelled
                count += labelled
            if extra is not None:
                align_running += float(extra.detach())
                align_steps += 1
        phases(VALIDATING, epoch=epoch + 1)
        if spec.regime != "frozen":
            estimate_feature_statistics(fwd, own_images)  # the adapted backbone's statistics, before validation
        val_loss = validation_loss(fwd, loss_fn, data.val, spec.optim.batch_size)
        if not math.isfinite(val_loss):
            raise NonFiniteLossError(
                f"training diverged: validation loss became {val_loss} at epoch {epoch} (optim.lr={spec.optim.lr:g}); "
                "lower optim.lr"
            )
        seconds = time.perf_counter() - epoch_start
        extra_record = {"align_loss": align_running / max(align_steps, 1)} if align_loss is not None else None
        record = state.end_epoch(
            epoch, running / max(count, 1), val_loss, model, spec.optim, seconds, extra=extra_record
        )
        if reporter is not None:
            reporter.epoch_end(epoch, dict(record), save_checkpoint)


def trial_metrics(
    model: Segmenter,
    state: TrainState,
    fwd: Forward,
    device: torch.device,
    iou: dict[str, float],
    diagnostics: dict[str, float],
    wall_time_s: float,
) -> dict[str, float]:
    """The final metrics of a trial: test IoUs, parameter counts, diagnostics, epochs and times."""
    metrics: dict[str, float] = {
        **iou,
        **{f"params/{k}": float(v) for k, v in model.parameter_counts().items()},
        **diagnostics,
        "epochs_run": float(state.epoch),
        "best_epoch": float(state.best_epoch),
        "best_val_loss": float(state.best_val_loss),
        "train_time_s": float(state.train_time_s),
        "wall_time_s": wall_time_s,
    }
    if model.alignment is not None:
        metrics["params/alignment"] = float(sum(p.numel() for p in model.alignment.parameters()))
    if fwd.cache is not None:
        metrics["backbone_extractions"] = float(fwd.cache.extractions)
        metrics["feature_store_hits"] = float(fwd.cache.store_hits)
    if device.type == "cuda":
        metrics["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return metrics
