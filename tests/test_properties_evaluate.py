"""The logged IoU_fg is the pixel count of the model's own predictions, at test and at native resolution: a short
frozen trial on two disc datasets (sizes not patch multiples), recounted in this process by tests/recount_iou.py
(plain torch + numpy, none of the trial engine). The fast companion of tests/test_trial_iou_reproduced.py (which
recounts in a fresh process and checks the saved state is the best epoch's), cheap enough for mutation testing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.learnable_data import write_disc_dataset
from tests.recount_iou import recount
from vfm_ablate.config import TrialSpec
from vfm_ablate.trial import run_trial
from vfm_ablate.validation import validate

EPS = 1e-7


@pytest.fixture(scope="module")
def discs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("discs_eval")
    return {
        "big": write_disc_dataset(root, "big", (62, 76), n_train=4, n_test=3, seed=1),
        "small": write_disc_dataset(root, "small", (50, 66), n_train=4, n_test=2, seed=2),
    }


@pytest.mark.parametrize("native", [False, True], ids=["test-resolution", "native"])
def test_logged_iou_is_the_recount_of_the_models_predictions(discs: dict, tmp_path: Path, native: bool) -> None:
    spec = validate(
        TrialSpec,
        {
            "backbone": "tiny_vit_p14",
            "weights": "random",
            "regime": "frozen",
            "device": "cpu",
            "seed": 3,
            "eval_native_resolution": native,
            "data": {"train": ["big", "small"], "resize": {"policy": "native"}, "val_fraction": 0.25},
            "optim": {"max_epochs": 3, "lr": 1e-2, "patience": 3},
            "num_overlays": 0,
        },
    )
    result = run_trial(spec, tmp_path, datasets=discs)
    logged = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert result.metrics == logged
    counts = recount(tmp_path)
    per_dataset = {name: c["intersection"] / (c["union"] + EPS) for name, c in counts.items()}
    assert all(0.0 < v < 1.0 for v in per_dataset.values()), per_dataset  # real predictions, not all / nothing
    for name, iou in per_dataset.items():
        assert logged[f"iou_fg/{name}"] == iou, name
    assert logged["macro_iou_fg"] == (per_dataset["big"] + per_dataset["small"]) / 2
    inter = sum(c["intersection"] for c in counts.values())
    union = sum(c["union"] for c in counts.values())
    assert logged["pooled_iou_fg"] == inter / (union + EPS)
