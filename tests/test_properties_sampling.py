"""What a trial's training steps are made of, watched from outside the trial: every optimiser step (a global
optimiser hook) and the features every training step feeds the head (a global forward hook on the head's first
layer, in training mode only). A frozen trial serves each image's features from its cache, so the bytes of a
feature grid name the image; the two datasets have different image shapes, so a grid's shape names its dataset.

Balanced sampling (data/sampling.py): every batch holds batch_size / D images of each of the D datasets, and an
epoch is ceil(max(sizes) / k) batches in which the largest dataset is seen exactly once and the smaller ones cycle.
Natural: every training image once per epoch, ceil(total / batch_size) batches."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from vfm_ablate.config import TrialSpec
from vfm_ablate.data.entries import DatasetEntry
from vfm_ablate.trial import run_trial
from vfm_ablate.validation import validate

EMBED_DIM = 48  # tiny_vit_p14
HEAD_WIDTH = 512  # the head's first layer: 1x1 conv EMBED_DIM -> 512
# unequal sizes (10 % validation: 1 image each): 8 + 3 training images; shapes 28 x 42 and 42 x 28 (grids 2x3, 3x2)
DATASETS = {
    "big": DatasetEntry(name="big", layout="synthetic", domain="a", n_train=9, n_test=1, size=(28, 42), seed=1),
    "small": DatasetEntry(name="small", layout="synthetic", domain="b", n_train=4, n_test=1, size=(42, 28), seed=2),
}
GRID = {(2, 3): "big", (3, 2): "small"}
TRAIN = {"big": 8, "small": 3}
EPOCHS = 2


class Epochs:
    def __init__(self) -> None:
        self.ends: list[int] = []

    def epoch_end(self, epoch, metrics, save_checkpoint) -> None:
        self.ends.append(epoch)


@contextmanager
def watched_steps() -> Iterator[list[list[tuple[str, str]]]]:
    """Every optimiser step's images as (dataset, digest of its feature grid); the list grows as training runs."""
    steps: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []

    def head_input(module: torch.nn.Module, args: tuple) -> None:
        if not (isinstance(module, torch.nn.Conv2d) and module.training):
            return
        if (module.in_channels, module.out_channels, module.kernel_size) != (EMBED_DIM, HEAD_WIDTH, (1, 1)):
            return
        for grid in args[0].detach():
            digest = hashlib.sha1(grid.float().contiguous().cpu().numpy().tobytes()).hexdigest()
            current.append((GRID[tuple(grid.shape[1:])], digest))

    def step(optimiser, args, kwargs) -> None:
        steps.append(list(current))
        current.clear()

    handles = [
        torch.nn.modules.module.register_module_forward_pre_hook(head_input),
        register_optimizer_step_post_hook(step),
    ]
    try:
        yield steps
    finally:
        for h in handles:
            h.remove()
    assert not current, "head inputs after the last optimiser step"


def _trial(tmp_path: Path, sampling: str, batch_size: int) -> list[list[tuple[str, str]]]:
    spec = validate(
        TrialSpec,
        {
            "backbone": "tiny_vit_p14",
            "weights": "random",
            "regime": "frozen",
            "device": "cpu",
            "data": {"train": ["big", "small"], "sampling": sampling, "resize": {"policy": "native"}},
            "optim": {"max_epochs": EPOCHS, "batch_size": batch_size, "patience": EPOCHS},
            "num_overlays": 0,
            "save_checkpoint": False,
        },
    )
    epochs = Epochs()
    with watched_steps() as steps:
        run_trial(spec, tmp_path, reporter=epochs, datasets=DATASETS)
    assert epochs.ends == list(range(EPOCHS))
    return steps


@pytest.mark.parametrize("batch_size", [2, 4])
def test_every_balanced_step_holds_the_configured_share_of_each_dataset(tmp_path: Path, batch_size: int) -> None:
    k = batch_size // 2
    steps = _trial(tmp_path, "balanced", batch_size)
    per_epoch = math.ceil(max(TRAIN.values()) / k)  # the documented rule: the largest dataset seen once
    assert len(steps) == EPOCHS * per_epoch, f"{len(steps)} steps in {EPOCHS} epochs"
    for s in steps:
        assert Counter(name for name, _ in s) == {"big": k, "small": k}, s
    for e in range(EPOCHS):
        epoch = [item for s in steps[e * per_epoch : (e + 1) * per_epoch] for item in s]
        big = Counter(digest for name, digest in epoch if name == "big")
        small = Counter(digest for name, digest in epoch if name == "small")
        assert len(big) == TRAIN["big"] and set(big.values()) == {1}, "each image of the largest dataset once"
        assert len(small) == TRAIN["small"], "the smaller dataset cycles through all its images"
        assert max(small.values()) - min(small.values()) <= 1, small


def test_natural_steps_see_every_training_image_once_per_epoch(tmp_path: Path) -> None:
    steps = _trial(tmp_path, "natural", 2)
    total = sum(TRAIN.values())
    per_epoch = math.ceil(total / 2)
    assert len(steps) == EPOCHS * per_epoch
    for e in range(EPOCHS):
        epoch = [item for s in steps[e * per_epoch : (e + 1) * per_epoch] for item in s]
        assert len(epoch) == total and len(set(epoch)) == total
        assert Counter(name for name, _ in epoch) == TRAIN
