"""The trial engine end to end on synthetic data with tiny random-init backbones (no Ray, no MLflow)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from vfm_ablate.config import TrialSpec
from vfm_ablate.data.entries import DatasetEntry
from vfm_ablate.models.backbones import Backbone
from vfm_ablate.trial import run_trial
from vfm_ablate.validation import validate

DATASETS = {
    "syn_a": DatasetEntry(name="syn_a", layout="synthetic", domain="a", n_train=6, n_test=2, size=(40, 48), seed=3),
    "syn_b": DatasetEntry(name="syn_b", layout="synthetic", domain="b", n_train=4, n_test=2, size=(48, 48), seed=4),
}


def spec(**overrides) -> TrialSpec:
    base = {
        "backbone": "tiny_vit_p14",
        "weights": "random",
        "data": {"train": ["syn_a"], "resize": {"policy": "longest_edge", "target": 42}},
        "optim": {"max_epochs": 3, "lr": 1e-3},
        "num_overlays": 1,
    }
    for key, value in overrides.items():
        node = base
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return validate(TrialSpec, base)


def losses(result) -> list[float]:
    return [v for h in result.history for v in (h["train_loss"], h["val_loss"])]


class Recorder:
    """Reporter that keeps each epoch's metrics and (optionally) saves a checkpoint per epoch."""

    def __init__(self, folder: Path | None = None, stop_after: int | None = None):
        self.epochs: list[dict] = []
        self.folder = folder
        self.stop_after = stop_after

    def epoch_end(self, epoch, metrics, save_checkpoint):
        self.epochs.append(metrics)
        if self.folder is not None:
            save_checkpoint(self.folder / f"epoch_{epoch}")
        if self.stop_after is not None and epoch >= self.stop_after:
            raise KeyboardInterrupt("simulated pre-emption")


@pytest.mark.parametrize("regime", ["frozen", "lora", "full"])
def test_each_regime_trains_evaluates_and_writes_outputs(tmp_path, regime):
    rec = Recorder()
    result = run_trial(spec(regime=regime), tmp_path, reporter=rec, datasets=DATASETS)
    m = result.metrics
    assert len(rec.epochs) == 3 and m["epochs_run"] == 3
    assert 0.0 <= m["iou_fg/syn_a"] <= 1.0
    assert "macro_iou_fg" not in m  # one test dataset: no macro/pooled
    assert m["params/head"] > 0 and m["params/total"] > m["params/head"]
    if regime == "frozen":
        assert m["params/trainable"] == m["params/head"] and m["params/lora"] == 0
    elif regime == "lora":
        assert m["params/lora"] > 0 and m["params/trainable"] == m["params/head"] + m["params/lora"]
        assert result.lora_targets and all(t.endswith(("qkv", "proj")) for t in result.lora_targets)
    else:
        assert m["params/trainable"] == m["params/total"]
    for name in ("metrics.json", "lora_targets.json", "config.yaml", "trainable_checkpoint.pt"):
        assert (tmp_path / name).is_file(), name
    targets = json.loads((tmp_path / "lora_targets.json").read_text())
    assert targets["targets"] == result.lora_targets and targets["trainable"] == m["params/trainable"]
    assert list((tmp_path / "overlays").glob("syn_a_*.png"))


def test_paired_regime_reports_per_dataset_macro_and_pooled_for_both_samplings(tmp_path):
    for sampling in ("natural", "balanced"):
        s = spec(data__train=["syn_a", "syn_b"], data__sampling=sampling, optim__max_epochs=2)
        m = run_trial(s, tmp_path / sampling, datasets=DATASETS).metrics
        a, b = m["iou_fg/syn_a"], m["iou_fg/syn_b"]
        assert m["macro_iou_fg"] == pytest.approx((a + b) / 2)
        assert min(a, b) - 1e-9 <= m["pooled_iou_fg"] <= max(a, b) + 1e-9


@contextmanager
def backbone_images() -> Iterator[list[int]]:
    """Counts the images every backbone module is called on (a forward hook on the modules themselves, not the
    feature cache's own counter)."""
    counts: list[int] = []

    def hook(module, args, output) -> None:
        if isinstance(module, Backbone):
            counts.append(int(args[0].shape[0]))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield counts
    finally:
        handle.remove()


def test_frozen_backbone_runs_once_per_image_with_the_cache(tmp_path):
    # syn_a: 6 train slices (1 held out for validation) + 2 test slices = 8 distinct images
    with backbone_images() as passes:
        cached = run_trial(spec(optim__max_epochs=4), tmp_path / "mem", datasets=DATASETS).metrics
    assert sum(passes) == 8 == cached["backbone_extractions"]
    with backbone_images() as passes:
        uncached = run_trial(spec(optim__max_epochs=4, feature_cache="off"), tmp_path / "off", datasets=DATASETS)
    assert sum(passes) == 4 * 6 + 2 == uncached.metrics["backbone_extractions"]  # every epoch: 5 train + 1 val
    assert uncached.metrics["iou_fg/syn_a"] == pytest.approx(cached["iou_fg/syn_a"], abs=1e-6)
    disk = spec(optim__max_epochs=2, feature_cache="disk", feature_cache_dir=str(tmp_path / "cache"))
    with backbone_images() as passes:
        first = run_trial(disk, tmp_path / "d1", datasets=DATASETS).metrics
    assert sum(passes) == 8 == first["backbone_extractions"]
    with backbone_images() as passes:
        second = run_trial(disk, tmp_path / "d2", datasets=DATASETS).metrics
    assert sum(passes) == 0 == second["backbone_extractions"]
    assert second["iou_fg/syn_a"] == pytest.approx(first["iou_fg/syn_a"], abs=1e-6)


def test_early_stopping_stops_and_best_validation_state_is_the_one_evaluated(tmp_path):
    rec = Recorder(folder=tmp_path / "ckpts")
    s = spec(regime="lora", optim__max_epochs=40, optim__patience=2, optim__lr=3e-2)
    result = run_trial(s, tmp_path / "out", reporter=rec, datasets=DATASETS)
    m = result.metrics
    val = [e["val_loss"] for e in rec.epochs]
    best = min(range(len(val)), key=val.__getitem__)
    assert m["epochs_run"] < 40 and len(val) == m["epochs_run"]
    assert m["best_epoch"] == best and len(val) - 1 - best == 2  # stopped exactly `patience` epochs after the best
    evaluated = torch.load(tmp_path / "out" / "trainable_checkpoint.pt")
    at_best = torch.load(tmp_path / "ckpts" / f"epoch_{best}" / "train_state.pt", weights_only=False)["model"]
    at_last = torch.load(tmp_path / "ckpts" / f"epoch_{len(val) - 1}" / "train_state.pt", weights_only=False)["model"]
    assert all(torch.equal(evaluated[k], at_best[k]) for k in evaluated)
    assert any(not torch.equal(evaluated[k], at_last[k]) for k in evaluated)


def test_seeds_repeat_exactly_and_differ_between_repeats(tmp_path):
    a1 = run_trial(spec(regime="lora"), tmp_path / "a1", datasets=DATASETS)
    a2 = run_trial(spec(regime="lora"), tmp_path / "a2", datasets=DATASETS)
    b = run_trial(spec(regime="lora", seed=1, split_seed=1), tmp_path / "b", datasets=DATASETS)
    assert losses(a1) == losses(a2) and a1.metrics["iou_fg/syn_a"] == a2.metrics["iou_fg/syn_a"]
    assert losses(b) != pytest.approx(losses(a1))


def test_resumed_trial_finishes_like_an_uninterrupted_one(tmp_path):
    s = spec(regime="lora", optim__max_epochs=4)
    whole = run_trial(s, tmp_path / "whole", datasets=DATASETS)
    with pytest.raises(KeyboardInterrupt):
        run_trial(s, tmp_path / "cut", reporter=Recorder(tmp_path / "ck", stop_after=1), datasets=DATASETS)
    resumed = run_trial(s, tmp_path / "cut", resume_from=tmp_path / "ck" / "epoch_1", datasets=DATASETS)
    assert resumed.metrics["epochs_run"] == 4
    assert losses(resumed) == pytest.approx(losses(whole), rel=1e-5)
    assert resumed.metrics["iou_fg/syn_a"] == pytest.approx(whole.metrics["iou_fg/syn_a"], abs=1e-6)


def test_checkpoint_of_another_trial_is_refused(tmp_path):
    run_trial(spec(), tmp_path / "a", reporter=Recorder(tmp_path / "ck"), datasets=DATASETS)
    from vfm_ablate.errors import ConfigError

    with pytest.raises(ConfigError, match="belongs to trial"):
        run_trial(spec(seed=7), tmp_path / "b", resume_from=tmp_path / "ck" / "epoch_0", datasets=DATASETS)
