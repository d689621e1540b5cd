"""The trial engine says what it is doing: every phase in order, with progress inside the long ones, to a
reporter that listens (and to none that does not); a frozen trial's feature extraction is a phase of its own that
changes no result."""

from __future__ import annotations

from pathlib import Path

from vfm_ablate.config import TrialSpec
from vfm_ablate.data.entries import DatasetEntry
from vfm_ablate.trial import run_trial
from vfm_ablate.trial.phases import Phase
from vfm_ablate.validation import validate

DATASETS = {
    "syn_a": DatasetEntry(name="syn_a", layout="synthetic", domain="a", n_train=6, n_test=2, size=(28, 28), seed=3)
}


def _spec(**extra: object) -> TrialSpec:
    base = {
        "backbone": "tiny_vit_p14",
        "weights": "random",
        "device": "cpu",
        "num_overlays": 0,
        "data": {"train": ["syn_a"], "resize": {"policy": "native"}},
        "optim": {"max_epochs": 2, "lr": 1e-3},
        **extra,
    }
    return validate(TrialSpec, base)


class Listener:
    def __init__(self) -> None:
        self.said: list[Phase | tuple[str, int]] = []

    def epoch_end(self, epoch, metrics, save_checkpoint) -> None:  # type: ignore[no-untyped-def]
        self.said.append(("epoch", epoch))

    def phase(self, phase: Phase) -> None:
        self.said.append(phase)


def _kinds(said: list) -> list[str]:
    """The phases in order, each run of one (kind, epoch) once."""
    out: list[str] = []
    for item in said:
        text = (
            f"{item[0]} {item[1] + 1}"
            if isinstance(item, tuple)
            else item.kind + (f" {item.epoch}" if item.epoch else "")
        )
        if not out or out[-1] != text:
            out.append(text)
    return out


def test_a_frozen_trial_says_every_phase_in_order_with_its_progress(tmp_path: Path) -> None:
    heard = Listener()
    run_trial(_spec(), tmp_path, reporter=heard, datasets=DATASETS)
    assert _kinds(heard.said) == [
        "loading data",
        "building model",
        "extracting features",
        "training 1",
        "validating 1",
        "epoch 1",
        "training 2",
        "validating 2",
        "epoch 2",
        "testing",
        "writing outputs",
    ]
    phases = [p for p in heard.said if isinstance(p, Phase)]
    extracting = [p for p in phases if p.kind == "extracting features"]
    # every image once (5 train + 1 validation + 2 test), counted up one by one
    assert [p.done for p in extracting] == list(range(9)) and {p.total for p in extracting} == {8}
    assert extracting[-1].text() == "extracting features 8/8 images"
    steps = [p for p in phases if p.kind == "training" and p.epoch == 1]
    assert [p.done for p in steps] == [0, 1, 2] and {p.total for p in steps} == {3}  # 5 images, batch 2
    assert steps[1].text() == "training epoch 1 · step 1/3"
    testing = [p for p in phases if p.kind == "testing"]
    assert [p.done for p in testing] == [0, 1, 2] and testing[-1].finished


def test_a_lora_trial_extracts_nothing_and_a_reporter_without_phase_hears_epochs_only(tmp_path: Path) -> None:
    heard = Listener()
    run_trial(_spec(regime="lora"), tmp_path / "a", reporter=heard, datasets=DATASETS)
    assert "extracting features" not in _kinds(heard.said)

    class EpochsOnly:
        epochs = 0

        def epoch_end(self, epoch, metrics, save_checkpoint) -> None:  # type: ignore[no-untyped-def]
            self.epochs += 1

    quiet = EpochsOnly()
    run_trial(_spec(regime="lora"), tmp_path / "b", reporter=quiet, datasets=DATASETS)
    assert quiet.epochs == 2


def test_extracting_before_the_first_epoch_changes_no_result(tmp_path: Path) -> None:
    """The cache filled up front (memory) against features computed in every step where they are needed (off)."""
    ahead = run_trial(_spec(), tmp_path / "ahead", datasets=DATASETS)
    inline = run_trial(_spec(feature_cache="off"), tmp_path / "inline", datasets=DATASETS)
    assert ahead.metrics["backbone_extractions"] == 8  # every image once
    assert inline.metrics["backbone_extractions"] > 8
    assert [h["val_loss"] for h in ahead.history] == [h["val_loss"] for h in inline.history]
    assert ahead.metrics["iou_fg/syn_a"] == inline.metrics["iou_fg/syn_a"]
