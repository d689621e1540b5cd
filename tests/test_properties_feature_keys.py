"""Frozen features are shared between trials only when they are the same features: the feature-store key
(backbone fingerprint + exact network input) differs whenever anything that changes the features differs
(precision, weights, resize, input alignment, normalisation), and stays equal where nothing does.

Each case runs a base trial and a variant trial against the same real `LocalFeatureStore` folder, through
`run_trial(feature_store=...)`, and records the keys the trial asked the store for."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from vfm_ablate.config import TrialSpec
from vfm_ablate.data.entries import DatasetEntry
from vfm_ablate.models.backbones import build_backbone
from vfm_ablate.models.registry import BackboneEntry, get_entry
from vfm_ablate.trial import run_trial
from vfm_ablate.trial.features import LocalFeatureStore
from vfm_ablate.validation import validate

DATASETS = {
    "syn": DatasetEntry(name="syn", layout="synthetic", domain="a", n_train=3, n_test=1, size=(28, 42), seed=2),
    "tgt": DatasetEntry(name="tgt", layout="synthetic", domain="b", n_train=2, n_test=1, size=(28, 28), seed=3),
}
IMAGES = 3 + 1 + 1  # syn: 2 train + 1 validation + 1 test; tgt: its test image (+ its training images if used)


class RecordingStore(LocalFeatureStore):
    """The real local store, remembering every key a trial asked it for."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.keys: set[tuple[str, str]] = set()

    def get_or_extract(self, fingerprint, digest, extract):
        self.keys.add((fingerprint, digest))
        return super().get_or_extract(fingerprint, digest, extract)


def _checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    torch.save(build_backbone(get_entry("tiny_vit_p14"), pretrained=False).net.state_dict(), path)
    return path


def _spec(settings: dict[str, Any]) -> TrialSpec:
    base: dict[str, Any] = {
        "backbone": "tiny_vit_p14",
        "weights": "random",
        "regime": "frozen",
        "device": "cpu",
        "data": {"train": ["syn"], "test": ["syn", "tgt"], "resize": {"policy": "native"}, "val_fraction": 0.34},
        "optim": {"max_epochs": 1},
        "num_overlays": 0,
        "save_checkpoint": False,
    }
    for key, value in settings.items():
        *parents, leaf = key.split(".")
        node = base
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return validate(TrialSpec, base)


def _trial(tmp_path: Path, name: str, settings: dict[str, Any], store_dir: Path, backbones) -> tuple[set, dict]:
    store = RecordingStore(store_dir)
    result = run_trial(_spec(settings), tmp_path / name, feature_store=store, backbones=backbones, datasets=DATASETS)
    assert len(store.keys) >= IMAGES
    return store.keys, result.metrics


def _local_entry(path: Path) -> BackboneEntry:
    return get_entry("tiny_vit_p14").model_copy(update={"name": "tiny_local", "checkpoint": str(path)})


# each case: (base settings, variant settings); the variant changes the features, so no key may be shared
DIFFERENT = {
    "precision": ({}, {"precision": "bf16"}),
    "random init of another seed": ({}, {"seed": 1}),
    "random init vs checkpoint": ({}, {"backbone": "tiny_local", "weights": "pretrained"}),
    "resize": ({}, {"data.resize": {"policy": "longest_edge", "target": 56}}),
    "histogram matching": ({}, {"alignment.input": "histogram"}),
    "z-scoring": ({}, {"alignment.input": "zscore", "data.target": ["tgt"]}),
    "clahe": ({}, {"alignment.input": "clahe"}),
    "normalisation": ({"backbone": "tiny_openclip"}, {"backbone": "tiny_openclip", "data.normalisation": "backbone"}),
}
# the variant changes nothing before the head: every feature must come from the store
SAME = {
    "the same trial again": ({}, {}),
    "another seed on the same checkpoint": (
        {"backbone": "tiny_local", "weights": "pretrained"},
        {"backbone": "tiny_local", "weights": "pretrained", "seed": 4},
    ),
    "feature- and loss-level alignment, lr": (
        {"data.target": ["tgt"]},
        {"data.target": ["tgt"], "alignment.features": "standardise", "alignment.loss": "mmd", "optim.lr": 1e-3},
    ),
    "the imagenet statistics by name": ({}, {"data.normalisation": "backbone"}),  # tiny_vit_p14's own are ImageNet's
}


@pytest.mark.parametrize(("base", "variant"), DIFFERENT.values(), ids=DIFFERENT.keys())
def test_anything_that_changes_the_features_changes_every_key(tmp_path: Path, base: dict, variant: dict) -> None:
    backbones = {"tiny_local": _local_entry(_checkpoint(tmp_path / "weights.pt", seed=0))}
    first, _ = _trial(tmp_path, "base", base, tmp_path / "store", backbones)
    second, metrics = _trial(tmp_path, "variant", {**base, **variant}, tmp_path / "store", backbones)
    assert not first & second, "a key the variant shares with the base trial"
    assert metrics["feature_store_hits"] == 0 and metrics["backbone_extractions"] == len(second)


@pytest.mark.parametrize(("base", "variant"), SAME.values(), ids=SAME.keys())
def test_what_changes_nothing_before_the_head_shares_every_feature(tmp_path: Path, base: dict, variant: dict) -> None:
    backbones = {"tiny_local": _local_entry(_checkpoint(tmp_path / "weights.pt", seed=0))}
    first, _ = _trial(tmp_path, "base", base, tmp_path / "store", backbones)
    second, metrics = _trial(tmp_path, "variant", {**base, **variant}, tmp_path / "store", backbones)
    assert first <= second  # (aligned trials also read the target's training images)
    assert metrics["feature_store_hits"] == len(first) and metrics["backbone_extractions"] == len(second - first)


def test_a_checkpoint_rewritten_under_the_same_name_is_other_weights(tmp_path: Path) -> None:
    weights = _checkpoint(tmp_path / "weights.pt", seed=0)
    backbones = {"tiny_local": _local_entry(weights)}
    settings = {"backbone": "tiny_local", "weights": "pretrained"}
    first, _ = _trial(tmp_path, "before", settings, tmp_path / "store", backbones)
    _checkpoint(weights, seed=1)  # re-exported: same path, other tensors
    second, metrics = _trial(tmp_path, "after", settings, tmp_path / "store", backbones)
    assert not first & second
    assert metrics["feature_store_hits"] == 0


def test_the_store_folder_holds_one_file_per_key(tmp_path: Path) -> None:
    keys, _ = _trial(tmp_path, "one", {}, tmp_path / "store", None)
    files = {(p.parents[1].name, p.stem) for p in (tmp_path / "store").rglob("*.pt")}
    assert files == keys
    shutil.rmtree(tmp_path / "store")
