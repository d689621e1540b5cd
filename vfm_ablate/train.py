"""Fit and evaluate one trial under the study's protocol. No Ray, no MLflow: runs from a notebook, the CLI or a Ray trial.

Reads top to bottom: data -> model -> (frozen feature cache) -> epochs with early stopping on validation loss ->
best-validation state -> test IoU_fg per dataset (+ macro and pooled) -> diagnostics -> files in `out_dir`.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml
from monai.losses import DiceLoss

from .config import TrialSpec
from .data.entries import DatasetEntry, resolve_dataset
from .data.sampling import epoch_batches, split_validation
from .data.sources import LoadedDataset, Slice, load_dataset
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, image_to_tensor, mask_to_tensor, target_size
from .device import resolve_device
from .errors import ConfigError, DataError
from .features import FeatureCache, backbone_fingerprint
from .metrics import IoUAccumulator
from .models.registry import BackboneEntry, get_entry
from .models.segmenter import Segmenter, build_segmenter
from .trial_outputs import CHECKPOINT_FILE, CONFIG_FILE, LORA_TARGETS_FILE, METRICS_FILE, OVERLAYS_DIR, STATE_FILE



class TrialReporter(Protocol):
    """Receives each epoch's metrics; calls `save_checkpoint(dir)` when it wants the training state on disk."""

    def epoch_end(self, epoch: int, metrics: dict[str, float], save_checkpoint: Callable[[Path], None]) -> None: ...


@dataclass
class TrialResult:
    metrics: dict[str, float]
    history: list[dict[str, float]]
    out_dir: Path
    lora_targets: list[str] = field(default_factory=list)


@dataclass
class Item:
    """One prepared slice: network-sized image and mask tensors (CPU), plus the native mask for native-size eval."""

    key: str
    dataset: str
    image: torch.Tensor  # 3 x h x w float32, normalised
    mask: torch.Tensor  # h x w int64 (0/1)
    native_mask: np.ndarray | None
    source: str


class NonFiniteLossError(RuntimeError):
    """Training diverged (NaN/inf loss): the trial fails with this error instead of training on garbage."""


# --------------------------------------------------------------------------------------------- setup helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _normalisation(spec: TrialSpec, entry: BackboneEntry) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet statistics for every backbone (the study's choice) unless the trial asks for the backbone's own."""
    if spec.data.normalisation == "backbone":
        return entry.mean, entry.std
    return IMAGENET_MEAN, IMAGENET_STD


def _prepare(slices: list[Slice], dataset: str, split: str, entry: BackboneEntry, spec: TrialSpec) -> list[Item]:
    mean, std = _normalisation(spec, entry)
    items = []
    for i, s in enumerate(slices):
        if s.mask is None:
            raise DataError(f"{s.source}: dataset '{dataset}' {split} slice has no mask but is used for training/testing")
        size = target_size(s.image.shape[0], s.image.shape[1], spec.data.resize, entry.patch_size)
        items.append(
            Item(
                key=f"{dataset}/{split}/{i}",
                dataset=dataset,
                image=image_to_tensor(s.image, size, mean, std),
                mask=mask_to_tensor(s.mask, size),
                native_mask=s.mask if spec.eval_native_resolution else None,
                source=s.source,
            )
        )
    return items


def _load_all(spec: TrialSpec, datasets: dict[str, DatasetEntry] | None) -> dict[str, LoadedDataset]:
    names = list(dict.fromkeys([*spec.data.train, *spec.data.test_datasets, *spec.data.unlabelled]))
    if spec.diagnostics.enabled and spec.diagnostics.datasets:
        names = list(dict.fromkeys([*names, *spec.diagnostics.datasets]))
    return {n: load_dataset(resolve_dataset(n, datasets), spec.split_seed) for n in names}


# --------------------------------------------------------------------------------------------- forward passes


class Forward:
    """Runs the segmenter on items; in the frozen regime the backbone part goes through the feature cache."""

    def __init__(self, model: Segmenter, device: torch.device, spec: TrialSpec, entry: BackboneEntry) -> None:
        self.model = model
        self.device = device
        self.precision = spec.precision
        self.cache: FeatureCache | None = None
        if spec.regime == "frozen":
            fingerprint = backbone_fingerprint(entry.model_dump(mode="json"), spec.weights, spec.precision)
            self.cache = FeatureCache(
                self._backbone_features, spec.feature_cache, fingerprint, spec.feature_cache_dir
            )

    @torch.no_grad()
    def _backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        with _autocast(self.device, self.precision):
            return self.model.features(images.to(self.device)).float()

    def logits(self, items: list[Item]) -> torch.Tensor:
        """Logits for same-shaped items, stacked (callers group by shape: no zero padding, ever)."""
        out_size = tuple(items[0].mask.shape)
        with _autocast(self.device, self.precision):
            if self.cache is not None:
                feats = torch.stack([self.cache.features(it.key, it.image) for it in items]).to(self.device)
                logits = self.model.head_forward(feats, out_size)
            else:
                images = torch.stack([it.image for it in items]).to(self.device)
                logits = self.model(images, out_size)
        return logits.float()


def _by_shape(items: list[Item]) -> Iterator[list[Item]]:
    groups: dict[tuple[int, ...], list[Item]] = defaultdict(list)
    for it in items:
        groups[tuple(it.image.shape)].append(it)
    yield from groups.values()


def _batch_loss(fwd: Forward, loss_fn: DiceLoss, items: list[Item]) -> torch.Tensor:
    """Mean per-image Dice loss; images of different sizes are run as separate groups instead of padded."""
    total = 0.0
    for group in _by_shape(items):
        logits = fwd.logits(group)
        target = torch.stack([it.mask for it in group]).unsqueeze(1).to(fwd.device)
        total = total + loss_fn(logits, target) * len(group)
    return total / len(items)


@torch.no_grad()
def _validation_loss(fwd: Forward, loss_fn: DiceLoss, items: list[Item], batch_size: int) -> float:
    fwd.model.eval()
    losses = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        losses.append(float(_batch_loss(fwd, loss_fn, chunk)) * len(chunk))
    return sum(losses) / len(items)


# --------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(fwd: Forward, items: list[Item], native: bool) -> tuple[IoUAccumulator, dict[str, list[np.ndarray]]]:
    """IoU_fg pixel totals over every test pixel; returns a few predictions per dataset for overlays."""
    fwd.model.eval()
    acc = IoUAccumulator()
    preds: dict[str, list[np.ndarray]] = defaultdict(list)
    for it in items:
        logits = fwd.logits([it])
        if native and it.native_mask is not None:
            logits = torch.nn.functional.interpolate(
                logits, size=it.native_mask.shape, mode="bilinear", align_corners=False
            )
            target = torch.from_numpy(it.native_mask.astype(np.int64))
        else:
            target = it.mask
        pred = logits.argmax(dim=1)[0].cpu()
        acc.update(it.dataset, pred, target)
        preds[it.dataset].append(pred.numpy().astype(np.uint8))
    return acc, preds


def _write_overlays(out_dir: Path, items: list[Item], preds: dict[str, list[np.ndarray]], per_dataset: int) -> None:
    from PIL import Image

    if per_dataset <= 0:
        return
    folder = out_dir / OVERLAYS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    seen: dict[str, int] = defaultdict(int)
    for it in items:
        k = seen[it.dataset]
        if k >= per_dataset or k >= len(preds[it.dataset]):
            continue
        seen[it.dataset] += 1
        pred = preds[it.dataset][k].astype(bool)
        gt = it.mask.numpy().astype(bool)
        if pred.shape != gt.shape:
            continue
        grey = it.image[0].numpy()
        grey = ((grey - grey.min()) / (np.ptp(grey) + 1e-8) * 255).astype(np.uint8)
        rgb = np.stack([grey] * 3, axis=-1).astype(np.float32)
        # green = ground truth only, red = prediction only, yellow = both
        colour = np.zeros_like(rgb)
        colour[gt & ~pred] = (0, 255, 0)
        colour[pred & ~gt] = (255, 0, 0)
        colour[pred & gt] = (255, 255, 0)
        marked = gt | pred
        rgb[marked] = 0.55 * rgb[marked] + 0.45 * colour[marked]
        Image.fromarray(rgb.astype(np.uint8)).save(folder / f"{it.dataset}_{k:02d}.png")


# --------------------------------------------------------------------------------------------- diagnostics


def _diagnostics(
    model: Segmenter, spec: TrialSpec, entry: BackboneEntry, loaded: dict[str, LoadedDataset], stage: str, out_dir: Path
) -> dict[str, float]:
    from .diagnostics import domain_metrics, pca_plot
    from .embeddings import dataset_embeddings

    names = spec.diagnostics.datasets or [*spec.data.test_datasets, *spec.data.unlabelled]
    mean, std = _normalisation(spec, entry)
    model.eval()
    embeddings = {}
    for name in names:
        ds = loaded[name]
        slices = ds.test or ds.unlabelled or ds.train
        embeddings[name] = dataset_embeddings(
            model.backbone, slices, spec.data.resize, mean, std, pooling=spec.diagnostics.pooling
        )
    if len(embeddings) < 2:
        raise ConfigError(f"diagnostics need at least two datasets, got {names}")
    metrics = domain_metrics(embeddings, seed=spec.seed, pca_dim=spec.diagnostics.pca_dim)
    pca_plot(embeddings, out_dir / f"pca_{stage}.png", title=f"{spec.backbone} ({stage})")
    return {f"diag/{stage}/{k}": float(v) for k, v in metrics.items()}


# --------------------------------------------------------------------------------------------- the trial


def run_trial(
    spec: TrialSpec,
    out_dir: str | Path,
    *,
    reporter: TrialReporter | None = None,
    resume_from: str | Path | None = None,
    backbones: dict[str, BackboneEntry] | None = None,
    datasets: dict[str, DatasetEntry] | None = None,
) -> TrialResult:
    """Train and evaluate one trial; `resume_from` is a folder written by `save_checkpoint` of an earlier run."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(spec.device)
    entry = get_entry(spec.backbone, backbones)

    # ---- data: validation hold-out per train dataset (seeded by split_seed), test sets as given
    loaded = _load_all(spec, datasets)
    train_items: list[list[Item]] = []
    val_items: list[Item] = []
    for name in spec.data.train:
        prepared = _prepare(loaded[name].train, name, "train", entry, spec)
        if len(prepared) < 2:
            raise DataError(f"dataset '{name}' has {len(prepared)} training slice(s); need at least 2 (train + validation)")
        tr_idx, va_idx = split_validation(len(prepared), spec.data.val_fraction, spec.split_seed)
        train_items.append([prepared[i] for i in tr_idx])
        val_items.extend(prepared[i] for i in va_idx)
    test_items: list[Item] = []
    for name in spec.data.test_datasets:
        if not loaded[name].test:
            raise DataError(f"dataset '{name}' has no labelled test split")
        test_items.extend(_prepare(loaded[name].test, name, "test", entry, spec))

    # ---- model, optimiser, loss
    seed_everything(spec.seed)
    model = build_segmenter(spec, entry).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=spec.optim.lr, weight_decay=spec.optim.weight_decay)
    loss_fn = DiceLoss(softmax=True, to_onehot_y=True, include_background=True)
    fwd = Forward(model, device, spec, entry)

    state: dict[str, Any] = {
        "epoch": 0,
        "best_val_loss": math.inf,
        "best_epoch": -1,
        "bad_epochs": 0,
        "stopped": False,
        "history": [],
        "best_state": None,
        "diag_frozen": None,
        "train_time_s": 0.0,
    }
    if resume_from is not None:
        saved = torch.load(Path(resume_from) / STATE_FILE, map_location="cpu", weights_only=False)
        if saved["trial_id"] != spec.trial_id():
            raise ConfigError(f"{resume_from}: checkpoint belongs to trial {saved['trial_id']}, not {spec.trial_id()}")
        model.load_trainable_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        torch.set_rng_state(saved["torch_rng"])
        state = saved["state"]

    diag_metrics: dict[str, float] = {}
    if spec.diagnostics.enabled:
        if state["diag_frozen"] is None:
            # before any training step (a LoRA model with B = 0 is exactly the frozen backbone)
            state["diag_frozen"] = _diagnostics(model, spec, entry, loaded, "frozen", out_dir)
        diag_metrics.update(state["diag_frozen"])

    def save_checkpoint(folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        payload = {
            "trial_id": spec.trial_id(),
            "model": model.trainable_state_dict(),
            "optimiser": optimiser.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "state": state,
        }
        torch.save(payload, folder / STATE_FILE)

    # ---- epochs with early stopping on validation loss
    sizes = [len(items) for items in train_items]
    while not state["stopped"] and state["epoch"] < spec.optim.max_epochs:
        epoch = state["epoch"]
        epoch_start = time.perf_counter()
        model.train()
        rng = np.random.default_rng([spec.seed, epoch])  # per-epoch stream: a resumed trial replays the same order
        batches = epoch_batches(sizes, spec.data.sampling, spec.optim.batch_size, rng, spec.data.weights)
        running, count = 0.0, 0
        for batch in batches:
            items = [train_items[d][i] for d, i in batch]
            loss = _batch_loss(fwd, loss_fn, items)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"loss became {float(loss)} at epoch {epoch} (lr={spec.optim.lr})")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            running += float(loss.detach()) * len(items)
            count += len(items)
        val_loss = _validation_loss(fwd, loss_fn, val_items, spec.optim.batch_size)
        if not math.isfinite(val_loss):
            raise NonFiniteLossError(f"validation loss became {val_loss} at epoch {epoch}")
        if val_loss < state["best_val_loss"] - spec.optim.min_delta:
            state["best_val_loss"] = val_loss
            state["best_epoch"] = epoch
            state["bad_epochs"] = 0
            state["best_state"] = {k: v.detach().cpu().clone() for k, v in model.trainable_state_dict().items()}
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        state["stopped"] = state["bad_epochs"] >= spec.optim.patience
        state["train_time_s"] += time.perf_counter() - epoch_start
        record = {
            "epoch": float(epoch),
            "train_loss": running / max(count, 1),
            "val_loss": val_loss,
            "best_val_loss": state["best_val_loss"],
            "epoch_time_s": time.perf_counter() - epoch_start,
        }
        state["history"].append(record)
        if reporter is not None:
            reporter.epoch_end(epoch, dict(record), save_checkpoint)

    # ---- test with the best-validation state
    if state["best_state"] is not None:
        model.load_trainable_state_dict(state["best_state"])
    acc, preds = evaluate(fwd, test_items, spec.eval_native_resolution)
    _write_overlays(out_dir, test_items, preds, spec.num_overlays)

    if spec.diagnostics.enabled and spec.regime != "frozen":
        diag_metrics.update(_diagnostics(model, spec, entry, loaded, "adapted", out_dir))

    counts = model.parameter_counts()
    metrics: dict[str, float] = {
        **acc.metrics(),
        **{f"params/{k}": float(v) for k, v in counts.items()},
        **diag_metrics,
        "epochs_run": float(state["epoch"]),
        "best_epoch": float(state["best_epoch"]),
        "best_val_loss": float(state["best_val_loss"]),
        "train_time_s": float(state["train_time_s"]),
        "wall_time_s": time.perf_counter() - started,
    }
    if fwd.cache is not None:
        metrics["backbone_extractions"] = float(fwd.cache.extractions)
    if device.type == "cuda":
        metrics["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20

    _write_outputs(out_dir, spec, entry, model, metrics, state, counts, {n: resolve_dataset(n, datasets) for n in loaded})
    return TrialResult(metrics=metrics, history=list(state["history"]), out_dir=out_dir, lora_targets=list(model.lora_targets))


def _write_outputs(
    out_dir: Path,
    spec: TrialSpec,
    entry: BackboneEntry,
    model: Segmenter,
    metrics: dict[str, float],
    state: dict[str, Any],
    counts: dict[str, float],
    dataset_entries: dict[str, DatasetEntry],
) -> None:
    (out_dir / METRICS_FILE).write_text(json.dumps({"metrics": metrics, "history": state["history"]}, indent=2))
    (out_dir / LORA_TARGETS_FILE).write_text(
        json.dumps(
            {
                "regime": spec.regime,
                "targets": list(model.lora_targets),
                "num_targets": len(model.lora_targets),
                "rank": spec.lora.rank if spec.regime == "lora" else None,
                "alpha": spec.lora.alpha if spec.regime == "lora" else None,
                **counts,
            },
            indent=2,
        )
    )
    config = {
        "trial_id": spec.trial_id(),
        "trial": spec.model_dump(mode="json"),
        "backbone_entry": entry.model_dump(mode="json"),
        "dataset_entries": {name: e.model_dump(mode="json", exclude_unset=True) for name, e in dataset_entries.items()},
    }
    (out_dir / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    if spec.save_checkpoint:
        torch.save(model.trainable_state_dict(), out_dir / CHECKPOINT_FILE)
