"""A trial learns: on bright discs over noise, every regime's training loss falls and its test IoU_fg beats both
trivial predictors (all background, all foreground, scored on the same test pixels) by a wide margin; the same
trial trained on shuffled masks does not (the control that shows this test can fail). bf16 autocast on CPU learns
like fp32.

Tiny random-init ViT (2 blocks, D = 48), 10 training slices of 62 x 76 px, 8 epochs: seconds per trial on CPU.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.learnable_data import nearest_resize, read_split, trivial_ious, write_disc_dataset
from vfm_ablate.config import TrialSpec
from vfm_ablate.trial import TrialResult, run_trial
from vfm_ablate.validation import validate

pytestmark = pytest.mark.slow(seconds=6)  # trains trials to a verdict: the full suite, not the inner loop

SIZE = (62, 76)  # native; the network sees 56 x 70 (patch-14 multiples, policy native)
NETWORK_SIZE = (56, 70)
MARGIN = 0.3  # "by a wide margin": IoU_fg above the better trivial predictor


@pytest.fixture(scope="module")
def discs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("discs")
    entries = {
        "discs": write_disc_dataset(root, "discs", SIZE, seed=0),
        "shuffled": write_disc_dataset(root, "shuffled", SIZE, seed=0, shuffle_train_masks=True),
    }
    # the pixels a trial scores at test resolution: the true test masks, resized as the trial resizes them
    masks = [nearest_resize(m, NETWORK_SIZE) for _, m in read_split(entries["discs"], "test")]
    return {"entries": entries, "trivial": trivial_ious(masks), "root": root, "runs": {}}


def train(discs: dict, dataset: str, regime: str, precision: str = "fp32") -> TrialResult:
    """One short trial (cached per module: the bf16 test compares against the fp32 run of the learning test)."""
    key = (dataset, regime, precision)
    if key not in discs["runs"]:
        spec = validate(
            TrialSpec,
            {
                "backbone": "tiny_vit_p14",
                "weights": "random",
                "regime": regime,
                "device": "cpu",
                "precision": precision,
                "data": {"train": [dataset], "resize": {"policy": "native"}, "val_fraction": 0.2},
                "optim": {"max_epochs": 8, "lr": 3e-3, "patience": 100},
                "num_overlays": 0,
            },
        )
        out = Path(discs["root"]) / "runs" / "_".join(key)
        discs["runs"][key] = run_trial(spec, out, datasets=discs["entries"])
    return discs["runs"][key]


@pytest.mark.parametrize("regime", ["frozen", "lora", "full"])
def test_a_trial_learns_and_beats_both_trivial_predictors(discs: dict, regime: str) -> None:
    result = train(discs, "discs", regime)
    history = result.history
    assert len(history) == 8
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"], [h["train_loss"] for h in history]
    assert result.metrics["best_val_loss"] < 0.5 * history[0]["val_loss"], [h["val_loss"] for h in history]
    best_trivial = max(discs["trivial"].values())
    assert 0.1 < best_trivial < 0.3  # all foreground scores the foreground share; all background scores 0
    assert result.metrics["iou_fg/discs"] > best_trivial + MARGIN, (result.metrics["iou_fg/discs"], discs["trivial"])


@pytest.mark.parametrize("regime", ["frozen", "lora", "full"])
def test_the_same_trial_on_shuffled_masks_does_not_beat_them(discs: dict, regime: str) -> None:
    # same images, same settings, but every training image carries another image's mask; test masks are true
    result = train(discs, "shuffled", regime)
    best_trivial = max(discs["trivial"].values())
    assert result.metrics["iou_fg/shuffled"] < best_trivial + MARGIN, (result.metrics, discs["trivial"])


def test_bf16_autocast_on_cpu_gives_finite_losses_and_the_iou_of_fp32(discs: dict) -> None:
    fp32 = train(discs, "discs", "lora")
    bf16 = train(discs, "discs", "lora", precision="bf16")
    losses = [h[k] for h in bf16.history for k in ("train_loss", "val_loss")]
    assert all(math.isfinite(v) for v in losses)
    # bf16 really ran (its losses are not fp32's to the bit) and reached the same IoU within bf16's rounding
    assert losses != [h[k] for h in fp32.history for k in ("train_loss", "val_loss")]
    assert np.isclose(bf16.metrics["iou_fg/discs"], fp32.metrics["iou_fg/discs"], atol=0.05)
    assert bf16.metrics["iou_fg/discs"] > max(discs["trivial"].values()) + MARGIN
