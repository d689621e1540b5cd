"""A trial's output folder: write it (metrics, LoRA targets, config, checkpoint, overlays) and read its config back."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..config import TrialSpec
from ..data.entries import DatasetEntry
from ..errors import CheckpointError, ConfigError
from ..models.lora import peft_settings
from ..models.registry import BackboneEntry
from ..models.segmenter import Segmenter
from ..validation import load_yaml, validate
from .files import CHECKPOINT_FILE, CONFIG_FILE, LORA_TARGETS_FILE, METRICS_FILE, OVERLAYS_DIR
from .items import Item


def write_outputs(
    out_dir: Path,
    spec: TrialSpec,
    entry: BackboneEntry,
    model: Segmenter,
    metrics: dict[str, float],
    history: list[dict[str, float]],
    dataset_entries: dict[str, DatasetEntry],
) -> None:
    """metrics.json, lora_targets.json (the study's file), config.yaml and the trainable checkpoint."""
    counts = model.parameter_counts()
    (out_dir / METRICS_FILE).write_text(json.dumps({"metrics": metrics, "history": history}, indent=2))
    adapters = peft_settings(model.backbone.net)  # what peft holds, not what the spec asked for
    (out_dir / LORA_TARGETS_FILE).write_text(
        json.dumps(
            {
                "regime": spec.regime,
                "targets": list(model.lora_targets),
                "num_targets": len(model.lora_targets),
                "rank": _one_value(a["rank"] for a in adapters.values()),
                "alpha": _one_value(a["alpha"] for a in adapters.values()),
                "scaling": {name: a["scaling"] for name, a in adapters.items()},
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


def _one_value(values: Iterable[float]) -> float | list[float] | None:
    """The value every adapter shares (None without adapters); every distinct value when they differ."""
    distinct = sorted(set(values))
    return None if not distinct else distinct[0] if len(distinct) == 1 else distinct


def write_overlays(out_dir: Path, items: list[Item], preds: dict[str, list[np.ndarray]], per_dataset: int) -> None:
    """A few test predictions per dataset over their image: green = ground truth only, red = prediction only,
    yellow = both."""
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
        colour = np.zeros_like(rgb)
        colour[gt & ~pred] = (0, 255, 0)
        colour[pred & ~gt] = (255, 0, 0)
        colour[pred & gt] = (255, 255, 0)
        marked = gt | pred
        rgb[marked] = 0.55 * rgb[marked] + 0.45 * colour[marked]
        Image.fromarray(rgb.astype(np.uint8)).save(folder / f"{it.dataset}_{k:02d}.png")


def read_trial_config(checkpoint: Path) -> tuple[TrialSpec, BackboneEntry]:
    """The TrialSpec and backbone entry a trial wrote next to its trainable checkpoint."""
    if not checkpoint.is_file():
        raise CheckpointError(f"--checkpoint {checkpoint}: file not found")
    config_path = checkpoint.parent / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(
            f"--checkpoint {checkpoint}: the trial's {CONFIG_FILE} is not next to it ({config_path} missing); "
            f"diagnose needs it to rebuild the backbone and its adapters"
        )
    raw: Any = load_yaml(config_path)
    if not isinstance(raw, dict) or "trial" not in raw or "backbone_entry" not in raw:
        raise ConfigError(f"{config_path}: expected the keys 'trial' and 'backbone_entry' written by a trial")
    spec = validate(TrialSpec, raw["trial"], f"{config_path} [trial]")
    entry = validate(BackboneEntry, raw["backbone_entry"], f"{config_path} [backbone_entry]")
    return spec, entry
