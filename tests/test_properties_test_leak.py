"""No test image reaches anything a trial fits: histogram references, z-score statistics, feature standardisation,
the loss-level alignment batches, the diagnostics' probe and a diagnostics-only dataset's statistics.

Every alignment method runs twice on the same files except the test images: once with ordinary test images, once
with test images that would poison any statistic that read them (inverted, far brighter). Whatever is fitted must
be identical bit for bit: the training history, the trained state (head, adapters, feature statistics, domain
classifier) and every row the diagnostics' linear probe is fitted on (the real scikit-learn fit, watched). Only
what measures the test images (IoU, the diagnostics' distances and scores) may differ, and does."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.pipeline import Pipeline

from tests.learnable_data import write_disc_dataset
from vfm_ablate.config import TrialSpec
from vfm_ablate.data.entries import DatasetEntry
from vfm_ablate.errors import DataError
from vfm_ablate.models.registry import get_entry
from vfm_ablate.trial import run_trial
from vfm_ablate.trial.alignment import estimate_feature_statistics
from vfm_ablate.trial.forward import Forward
from vfm_ablate.trial.items import TrainingItems, load_trial_data
from vfm_ablate.validation import validate

# train dataset, unlabelled target, and a labelled dataset only the diagnostics read
SHAPES = {"src": (28, 42), "tgt": (42, 28), "extra": (28, 28)}


def _poison(folder: Path) -> None:
    """Every test image inverted and pushed to the top of the range: any mean, std or histogram that read one moves."""
    for path in sorted((folder / "test" / "images").glob("*.png")):
        image = np.asarray(Image.open(path)).astype(np.int32)
        Image.fromarray(np.clip(255 - image // 4, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, DatasetEntry]]:
    """{'clean': entries, 'poisoned': entries}: the same training files; the poisoned twins' test images differ."""
    root = tmp_path_factory.mktemp("leak")
    out: dict[str, dict[str, DatasetEntry]] = {"clean": {}, "poisoned": {}}
    for i, (name, size) in enumerate(SHAPES.items()):
        clean = write_disc_dataset(root / "clean", name, size, n_train=5, n_test=2, seed=10 + i)
        shutil.copytree(root / "clean" / name, root / "poisoned" / name)
        _poison(root / "poisoned" / name)
        out["clean"][name] = clean
        out["poisoned"][name] = clean.model_copy(update={"path": str(root / "poisoned" / name)})
        for split, same in (("train", True), ("test", False)):
            files = sorted((root / "clean" / name / split).rglob("*.png"))
            equal = [f.read_bytes() == (root / "poisoned" / f.relative_to(root / "clean")).read_bytes() for f in files]
            assert all(equal) if same else not any(equal[: len(equal) // 2]), (name, split)  # images first, masks
    return out


def _spec(regime: str, alignment: dict[str, Any], diagnostics: bool = True, labelled: dict | None = None) -> TrialSpec:
    return validate(
        TrialSpec,
        {
            "backbone": "tiny_vit_p14",
            "weights": "random",
            "regime": regime,
            "device": "cpu",
            "data": {
                "train": ["src"],
                "target": ["tgt"],
                "sampling": "balanced",
                "resize": {"policy": "native"},
                "val_fraction": 0.2,
                "labelled": labelled or {},
            },
            "optim": {"max_epochs": 1, "batch_size": 4, "lr": 1e-3},
            "alignment": alignment,
            "diagnostics": {"enabled": diagnostics, "datasets": ["src", "tgt", "extra"]},
            "num_overlays": 0,
        },
    )


class ProbeFits:
    """The rows and labels of every scikit-learn pipeline fit while a trial runs (the diagnostics' probes)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []
        real = Pipeline.fit

        def fit(pipeline, x, y=None, **params):
            self.calls.append((np.array(x, copy=True), np.array(y, copy=True)))
            return real(pipeline, x, y, **params)

        monkeypatch.setattr(Pipeline, "fit", fit)


def _run(tmp_path: Path, spec: TrialSpec, datasets: dict, monkeypatch: pytest.MonkeyPatch, name: str) -> dict:
    probes = ProbeFits(monkeypatch)
    result = run_trial(spec, tmp_path / name, datasets=datasets)
    monkeypatch.undo()
    return {
        "metrics": result.metrics,
        "history": result.history,
        "state": torch.load(tmp_path / name / "trainable_checkpoint.pt", weights_only=True),
        "probes": probes.calls,
    }


def _untimed(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in epoch.items() if not k.endswith("time_s")} for epoch in history]


# every input-, feature- and loss-level method at least once, frozen and LoRA (LoRA re-estimates its feature
# statistics after each epoch's steps and runs the adapted-backbone diagnostics too); diagnostics in two of them
METHODS = {
    "frozen histogram(target)+standardise+mmd, diagnostics": (
        "frozen",
        {"input": "histogram", "reference": "target", "features": "standardise", "loss": "mmd"},
        True,
    ),
    "lora zscore+standardise+dann, diagnostics": (
        "lora",
        {"input": "zscore", "features": "standardise", "loss": "dann"},
        True,
    ),
    "lora histogram(source)+coral": ("lora", {"input": "histogram", "loss": "coral", "sample": "tokens"}, False),
    "frozen clahe+standardise": ("frozen", {"input": "clahe", "features": "standardise"}, False),
    # data.labelled: src's training images beyond the 3 labelled ones are unlabelled training images, in the
    # batches and the statistics (still no test image)
    "frozen zscore+standardise+coral, src labelled 3": (
        "frozen",
        {"input": "zscore", "features": "standardise", "loss": "coral", "sample": "tokens"},
        False,
        {"src": 3},
    ),
}


@pytest.mark.parametrize("method", METHODS.values(), ids=METHODS.keys())
def test_poisoned_test_images_change_nothing_a_trial_fits(
    tmp_path: Path, twins: dict, monkeypatch: pytest.MonkeyPatch, method: tuple
) -> None:
    regime, alignment, diagnostics, *labelled = method
    spec = _spec(regime, alignment, diagnostics, *labelled)
    clean = _run(tmp_path, spec, twins["clean"], monkeypatch, "clean")
    poisoned = _run(tmp_path, spec, twins["poisoned"], monkeypatch, "poisoned")

    assert _untimed(clean["history"]) == _untimed(poisoned["history"]) and len(clean["history"]) == 1
    assert clean["state"].keys() == poisoned["state"].keys()
    changed = [k for k in clean["state"] if not torch.equal(clean["state"][k], poisoned["state"][k])]
    assert not changed, f"trained state that depends on the test images: {changed}"
    if not diagnostics:
        return
    stages = 4 if regime == "lora" else 3  # frozen (+ adapted), head input, bottleneck
    assert len(clean["probes"]) == len(poisoned["probes"]) == stages
    for (x, y), (x2, y2) in zip(clean["probes"], poisoned["probes"]):
        assert np.array_equal(x, x2) and np.array_equal(y, y2), "the probe was fitted on test images"
    # what measures the test images sees the poison
    m, p = clean["metrics"], poisoned["metrics"]
    for key in ("diag/frozen/fd/src_vs_extra", "diag/head_input/fd/src_vs_tgt", "diag/bottleneck/mmd/tgt_vs_extra"):
        assert m[key] != p[key], key


def test_statistics_refuse_test_images_and_plain_dicts(twins: dict) -> None:
    spec = _spec("frozen", {"features": "standardise"})
    data = load_trial_data(spec, get_entry("tiny_vit_p14"), twins["clean"])
    own = data.own_images(spec)
    assert set(own) == {"src", "tgt"} and all(own[name] for name in own)
    test_src = [it for it in data.test if it.dataset == "src"]
    with pytest.raises(DataError, match="test split"):
        TrainingItems({"src": [*own["src"], test_src[0]]}, data.loaded)
    with pytest.raises(DataError, match="another dataset"):
        TrainingItems({"src": own["tgt"]}, data.loaded)
    torch.manual_seed(0)
    from vfm_ablate.models.segmenter import build_segmenter
    from vfm_ablate.trial.alignment import attach_alignment

    model = build_segmenter(spec, get_entry("tiny_vit_p14"))
    attach_alignment(model, spec, list(own))
    with pytest.raises(TypeError, match="TrainingItems"):
        estimate_feature_statistics(Forward(model, torch.device("cpu"), spec, get_entry("tiny_vit_p14")), dict(own))


def test_unlabelled_training_images_beyond_data_labelled_are_training_images(twins: dict) -> None:
    """data.labelled: src's training images without a mask are in its statistics (and the loss-level batches), and
    they are training images: the guard accepts them, while a test image is still refused."""
    spec = _spec("frozen", {"features": "standardise", "loss": "mmd"}, labelled={"src": 2})
    data = load_trial_data(spec, get_entry("tiny_vit_p14"), twins["clean"])
    own = data.own_images(spec)
    (remainder,) = data.remainder
    assert len(remainder) == len(data.loaded["src"].training) - 2 > 0
    assert {it.source for it in remainder} <= {it.source for it in own["src"]}
    assert not {it.source for it in own["src"]} & {s.source for s in data.loaded["src"].test}
    test_src = [it for it in data.test if it.dataset == "src"]
    with pytest.raises(DataError, match="test split"):
        TrainingItems({"src": [*remainder, test_src[0]]}, data.loaded)
