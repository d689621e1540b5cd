"""Alignment inside a trial (tiny random-init backbones, synthetic data, CPU): the unsupervised-adaptation protocol
never reads a target label, every method trains and reports its feature-gap diagnostics, feature statistics are
what they claim, and alignment agrees with the frozen-feature cache and with resuming."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vfm_ablate.config import TrialSpec
from vfm_ablate.data.entries import DatasetEntry
from vfm_ablate.data.sources import clear_cache
from vfm_ablate.data.synthetic import write_folder
from vfm_ablate.models.registry import get_entry
from vfm_ablate.models.segmenter import build_segmenter
from vfm_ablate.trial import run_trial
from vfm_ablate.trial.alignment import attach_alignment, estimate_feature_statistics
from vfm_ablate.trial.files import CHECKPOINT_FILE
from vfm_ablate.trial.forward import Forward
from vfm_ablate.trial.items import load_trial_data
from vfm_ablate.validation import validate

DATASETS = {
    "src": DatasetEntry(name="src", layout="synthetic", domain="a", n_train=5, n_test=2, size=(40, 48), seed=3),
    "tgt": DatasetEntry(name="tgt", layout="synthetic", domain="b", n_train=4, n_test=2, size=(48, 48), seed=4),
}


def spec(regime: str = "frozen", alignment: dict | None = None, settings: dict | None = None, **data) -> TrialSpec:
    """A two-epoch trial on `src` with the unlabelled target `tgt`; `settings` overrides top-level keys."""
    return validate(
        TrialSpec,
        {
            "backbone": "tiny_vit_p14",
            "weights": "random",
            "regime": regime,
            "data": {"train": ["src"], "target": ["tgt"], "resize": {"policy": "longest_edge", "target": 42}, **data},
            "optim": {"max_epochs": 2, "lr": 1e-3},
            "num_overlays": 0,
            "alignment": alignment or {},
            "device": "cpu",
            **(settings or {}),
        },
    )


class Recorder:
    def __init__(self, folder: Path | None = None, stop_after: int | None = None):
        self.folder, self.stop_after = folder, stop_after

    def epoch_end(self, epoch, metrics, save_checkpoint):
        if self.folder is not None:
            save_checkpoint(self.folder / f"epoch_{epoch}")
        if self.stop_after is not None and epoch >= self.stop_after:
            raise KeyboardInterrupt("simulated pre-emption")


# --------------------------------------------------------------------------------------------- no label leaks


def _folder_datasets(root: Path, seeded: bool) -> dict[str, DatasetEntry]:
    src = write_folder(root / "src", "a", 5, 2, (40, 48), seed=3)
    tgt = write_folder(root / "tgt", "b", 6, 3, (48, 48), seed=4)
    if seeded:  # VNC-like: one labelled folder, the test split drawn with the split seed
        for sub in ("images", "masks"):
            for f in sorted((root / "tgt" / "test" / sub).glob("*.png")):
                f.rename(root / "tgt" / "train" / sub / f"t{f.name}")
        tgt = DatasetEntry(
            name="tgt", layout="folder", path=str(root / "tgt"), image_dir="train/images", mask_dir="train/masks",
            test_count=3,
        )  # fmt: skip
    return {"src": src.model_copy(update={"name": "src"}), "tgt": tgt.model_copy(update={"name": "tgt"})}


def _garbage_target_training_masks(root: Path, s: TrialSpec, entries: dict[str, DatasetEntry]) -> int:
    """Overwrite every mask file of the target's training split with bytes that are not even an image."""
    from vfm_ablate.data.layouts import list_slices, seeded_test_indices

    listing = list_slices(entries["tgt"])
    refs = listing.labelled
    if listing.test is None:
        test = set(seeded_test_indices(len(refs), listing.test_count, s.split_seed))
        refs = [r for i, r in enumerate(refs) if i not in test]
    for r in refs:
        r.mask.write_bytes(b"not a mask: garbage \x00\xff" * 7)
    return len(refs)


@pytest.mark.parametrize("seeded", [False, True], ids=["predefined-split", "seeded-split"])
@pytest.mark.parametrize(
    ("regime", "alignment"),
    [
        ("lora", {"input": "zscore", "features": "standardise", "loss": "mmd", "sample": "tokens"}),
        ("frozen", {"input": "histogram", "reference": "target", "loss": "dann", "schedule": "dann"}),
    ],
    ids=["lora-zscore-standardise-mmd", "frozen-histogram-dann"],
)
def test_no_target_label_leaks_results_are_bit_identical_with_garbage_target_masks(
    tmp_path: Path, seeded: bool, regime: str, alignment: dict
) -> None:
    entries = _folder_datasets(tmp_path / "data", seeded)
    s = spec(regime, alignment, sampling="balanced")
    clear_cache()
    clean = run_trial(s, tmp_path / "clean", datasets=entries)
    replaced = _garbage_target_training_masks(tmp_path / "data", s, entries)
    assert replaced >= 3
    clear_cache()  # nothing read before may be reused: the second trial reads the files again
    garbage = run_trial(s, tmp_path / "garbage", datasets=entries)
    clear_cache()
    timing = ("train_time_s", "wall_time_s")
    assert {k: v for k, v in clean.metrics.items() if k not in timing} == {
        k: v for k, v in garbage.metrics.items() if k not in timing
    }
    assert [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in clean.history] == [
        {k: v for k, v in h.items() if k != "epoch_time_s"} for h in garbage.history
    ]
    a = torch.load(tmp_path / "clean" / CHECKPOINT_FILE, weights_only=True)
    b = torch.load(tmp_path / "garbage" / CHECKPOINT_FILE, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "iou_fg/tgt" in clean.metrics  # the target's test split (labels intact) is what it is tested on


def test_target_items_carry_no_mask_and_only_enter_batches_under_a_loss_level_method() -> None:
    s = spec("frozen", {"features": "standardise"})
    entry = get_entry(s.backbone)
    data = load_trial_data(s, entry, DATASETS)
    assert [len(t) for t in data.target] == [4] and all(it.mask is None for it in data.target[0])
    loaded = data.loaded["tgt"]
    assert len(loaded.training) == 4 and all(s.mask is None for s in loaded.training) and not loaded.train
    assert all(s.mask is not None for s in loaded.test)
    assert {it.dataset for it in data.test} == {"src", "tgt"}
    assert s.batch_datasets() == ["src"] and spec("frozen", {"loss": "mmd"}).batch_datasets() == ["src", "tgt"]


# --------------------------------------------------------------------------------------------- every method runs


@pytest.mark.parametrize("regime", ["frozen", "lora"])
@pytest.mark.parametrize(
    "alignment",
    [
        {},
        {"input": "histogram"},
        {"input": "zscore"},
        {"input": "clahe"},
        {"features": "standardise"},
        {"loss": "mmd"},
        {"loss": "coral", "sample": "tokens", "max_tokens": 32},
        {"loss": "dann", "schedule": "dann", "schedule_epochs": 2},
    ],
    ids=["none", "histogram", "zscore", "clahe", "standardise", "mmd", "coral", "dann"],
)
def test_each_method_trains_and_logs_diagnostics_after_alignment(tmp_path: Path, regime: str, alignment: dict) -> None:
    s = spec(regime, alignment, {"diagnostics": {"enabled": True}}, sampling="balanced")
    result = run_trial(s, tmp_path, datasets=DATASETS)
    m = result.metrics
    assert 0.0 <= m["iou_fg/src"] <= 1.0 and 0.0 <= m["iou_fg/tgt"] <= 1.0
    for stage in ("head_input", "bottleneck"):
        assert {f"diag/{stage}/{k}" for k in ("fd", "mmd", "probe_acc", "probe_auc")} <= set(m)
        assert (tmp_path / f"pca_{stage}.png").is_file()
    assert ("diag/adapted/fd" in m) == (regime == "lora")
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert all(("align_loss" in h) == ("loss" in alignment) for h in history)
    if "loss" in alignment:
        assert all(h["align_loss"] > 0 for h in history)
    assert ("params/alignment" in m) == (alignment.get("features") == "standardise" or alignment.get("loss") == "dann")


def test_feature_standardisation_gives_each_dataset_mean_0_std_1_on_its_own_images() -> None:
    s = spec("frozen", {"features": "standardise"})
    entry = get_entry(s.backbone)
    data = load_trial_data(s, entry, DATASETS)
    model = build_segmenter(s, entry)
    own = data.own_images(s)
    attach_alignment(model, s, list(own))
    fwd = Forward(model, torch.device("cpu"), s, entry)
    estimate_feature_statistics(fwd, own)
    with torch.no_grad():
        for items in own.values():
            raw = torch.cat(
                [fwd.backbone_features([it]).transpose(0, 1).reshape(entry.embed_dim, -1) for it in items], 1
            )
            tokens = torch.cat([fwd.head_input([it]).transpose(0, 1).reshape(entry.embed_dim, -1) for it in items], 1)
            varying = raw.var(dim=1) > 1e-3
            assert varying.sum() > entry.embed_dim // 2
            assert tokens.mean(dim=1).abs().max() < 1e-4
            assert (tokens.std(dim=1, unbiased=False)[varying] - 1).abs().max() < 1e-3
            assert (raw.mean(dim=1).abs().max() > 0.1) or ((raw.std(dim=1) - 1).abs().max() > 0.1)  # it did change


def test_lora_feature_statistics_are_re_estimated_and_travel_with_the_best_state(tmp_path: Path) -> None:
    s = spec("lora", {"features": "standardise"}, {"optim": {"max_epochs": 3, "lr": 3e-3}})
    run_trial(s, tmp_path, datasets=DATASETS)
    saved = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    entry = get_entry(s.backbone)
    data = load_trial_data(s, entry, DATASETS)
    own = data.own_images(s)
    torch.manual_seed(s.seed)  # random-init backbone: the same base weights as the trial's (it seeds, then builds)
    untrained = build_segmenter(s, entry)
    attach_alignment(untrained, s, list(own))
    estimate_feature_statistics(Forward(untrained, torch.device("cpu"), s, entry), own)
    torch.manual_seed(s.seed)
    trained = build_segmenter(s, entry)
    attach_alignment(trained, s, list(own))
    trained.load_trainable_state_dict(saved)
    estimate_feature_statistics(Forward(trained, torch.device("cpu"), s, entry), own)
    key = "alignment.standardiser.mean"
    assert torch.allclose(trained.state_dict()[key], saved[key], atol=1e-5)  # estimated with the trained backbone
    assert not torch.allclose(untrained.state_dict()[key], saved[key], atol=1e-4)  # not the starting backbone's


# --------------------------------------------------------------------------------------------- cache and resume


def test_frozen_alignment_and_the_disk_feature_cache_agree(tmp_path: Path) -> None:
    def run(alignment: dict, name: str) -> dict:
        s = spec("frozen", alignment, {"feature_cache": "disk", "feature_cache_dir": str(tmp_path / "cache")})
        return run_trial(s, tmp_path / name, datasets=DATASETS).metrics

    first = run({"features": "standardise"}, "standardise")  # reads every image: train, target, test
    assert first["backbone_extractions"] > 0
    # feature- and loss-level methods sit after the backbone: the cached features are reused as they are
    assert run({"loss": "mmd"}, "mmd")["backbone_extractions"] == 0
    assert run({}, "none")["backbone_extractions"] == 0
    # input-level methods change the network input, and with it the cache key: new extractions, no stale features
    assert (
        run({"input": "clahe", "features": "standardise"}, "clahe")["backbone_extractions"]
        == first["backbone_extractions"]
    )


def test_an_aligned_trial_resumes_like_an_uninterrupted_one(tmp_path: Path) -> None:
    dann = {"features": "standardise", "loss": "dann", "schedule": "dann"}
    s = spec("lora", dann, {"optim": {"max_epochs": 3, "lr": 1e-3}}, sampling="balanced")
    whole = run_trial(s, tmp_path / "whole", datasets=DATASETS)
    with pytest.raises(KeyboardInterrupt):
        run_trial(s, tmp_path / "cut", reporter=Recorder(tmp_path / "ck", stop_after=1), datasets=DATASETS)
    resumed = run_trial(s, tmp_path / "cut", resume_from=tmp_path / "ck" / "epoch_1", datasets=DATASETS)
    keys = ("train_loss", "val_loss", "align_loss")
    assert [h[k] for h in resumed.history for k in keys] == pytest.approx(
        [h[k] for h in whole.history for k in keys], rel=1e-5
    )
    assert resumed.metrics["iou_fg/tgt"] == pytest.approx(whole.metrics["iou_fg/tgt"], abs=1e-6)
    shutil.rmtree(tmp_path / "ck")
