"""The standalone diagnose run: embed datasets with a backbone (and a trial's adapted backbone), measure the gap.

Without a checkpoint: one stage ("frozen", or the random-init backbone with weights: random). With a trial's
checkpoint: the backbone before ("frozen") and after ("adapted") its trained LoRA/full weights, on the trial's own
resize, normalisation and split seed. Writes metrics.json, pca_<stage>.png and embeddings_<stage>.npz.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import TrialSpec
from ..data.entries import DatasetEntry, resolve_dataset
from ..data.sources import Slice, load_dataset
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import CheckpointError, ConfigError, DataError
from ..models.backbones import Backbone, build_backbone
from ..models.checkpoints import read_state_dict
from ..models.registry import BackboneEntry
from ..models.segmenter import build_segmenter
from ..text_tables import format_table
from .embeddings import dataset_embeddings
from .measures import RankDeficiencyWarning, probe_rows
from .metrics import domain_metrics
from .plots import pca_plot


@dataclass(frozen=True)
class DiagnoseSetup:
    """Everything one diagnose run reads: the settings (a TrialSpec), the backbone entry, the trial checkpoint."""

    spec: TrialSpec  # backbone, weights, regime, lora, data.resize/normalisation, seed, split_seed, diagnostics
    entry: BackboneEntry
    checkpoint: Path | None


@dataclass(frozen=True)
class Selection:
    """One dataset's images to measure (`split` names which), and the other images the linear probe is fitted on:
    the training split of a test selection (None: the probe holds part of the measured images out)."""

    split: str
    slices: list[Slice]
    fitting: list[Slice] | None = None


def select_slices(
    labelled: list[str], unlabelled: list[str], split: str, split_seed: int, entries: dict[str, DatasetEntry]
) -> dict[str, Selection]:
    """name -> its Selection: `split` of each labelled dataset (unlabelled-only datasets give their images), the
    unlabelled images of each `unlabelled` dataset. Measuring the test split, the probe is fitted on the training
    split (as in a trial: no test image trains it)."""
    names = [*labelled, *unlabelled]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"diagnose: dataset(s) {dupes} given more than once")
    out: dict[str, Selection] = {}
    for name in labelled:
        ds = load_dataset(resolve_dataset(name, entries), split_seed)
        chosen = {"test": ds.test, "train": ds.train, "all": [*ds.train, *ds.test]}[split]
        if chosen:
            out[name] = Selection(split, list(chosen), list(ds.train) if split == "test" and ds.train else None)
        elif not ds.train and not ds.test and ds.unlabelled:
            out[name] = Selection("unlabelled", list(ds.unlabelled))
        else:
            raise DataError(f"dataset '{name}' has no {split} slices")
    for name in unlabelled:
        ds = load_dataset(resolve_dataset(name, entries), split_seed)
        if not ds.unlabelled:
            raise DataError(f"--unlabelled '{name}' has no unlabelled images (use --datasets for labelled datasets)")
        out[name] = Selection("unlabelled", list(ds.unlabelled))
    if len(out) < 2:
        raise ConfigError(f"diagnose: needs at least two datasets to compare, got {list(out)}")
    return out


def stages(setup: DiagnoseSetup) -> list[str]:
    """Which backbones to measure: the trial's starting point ("frozen") and/or its trained state ("adapted")."""
    if setup.checkpoint is None or setup.spec.regime == "frozen":
        return ["frozen"]  # a frozen trial's checkpoint holds only the head: the backbone is the entry's
    if setup.spec.weights == "pretrained":
        return ["frozen", "adapted"]
    if setup.spec.regime == "lora":
        raise CheckpointError(
            f"{setup.checkpoint}: this LoRA trial started from random weights, which its checkpoint does not hold "
            f"(only adapters + head); its adapted backbone cannot be rebuilt"
        )
    # full fine-tune from random init: the checkpoint holds every weight, but the random start is gone
    print("note: the trial started from random weights (not saved); only the adapted stage is measured")
    return ["adapted"]


def stage_backbone(setup: DiagnoseSetup, stage: str, device: torch.device) -> tuple[Backbone, dict[str, Any]]:
    """Frozen: the entry's backbone as the trial started. Adapted: the trial's segmenter with its trained weights."""
    if stage == "frozen":
        backbone = build_backbone(setup.entry, pretrained=setup.spec.weights == "pretrained")
        return backbone.to(device), dict(backbone.load_report)
    assert setup.checkpoint is not None
    segmenter = build_segmenter(setup.spec, setup.entry)
    state = read_state_dict(setup.checkpoint)
    # an aligned trial's feature statistics / domain classifier ("alignment.*") are not part of its backbone
    state = {k: v for k, v in state.items() if not k.startswith("alignment.")}
    segmenter.load_trainable_state_dict(state)  # exact keys and shapes, or CheckpointError
    report = {**segmenter.backbone.load_report, "trial_checkpoint": str(setup.checkpoint), "trial_tensors": len(state)}
    return segmenter.backbone.to(device), report


def run_diagnose(
    setup: DiagnoseSetup,
    slices: dict[str, Selection],
    out: Path,
    *,
    device: torch.device,
    probe_cv: int | None = None,
    permutations: int = 1000,
    batch_size: int = 4,
) -> dict[str, Any]:
    """Measure every stage, write metrics.json, pca_<stage>.png and embeddings_<stage>.npz; returns the report."""
    spec = setup.spec
    imagenet = spec.data.normalisation == "imagenet"
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if imagenet else (setup.entry.mean, setup.entry.std)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "backbone": setup.entry.name,
        "weights": spec.weights,
        "checkpoint": str(setup.checkpoint) if setup.checkpoint else None,
        "regime": spec.regime if setup.checkpoint else None,
        "pooling": spec.diagnostics.pooling,
        "datasets": {name: {"n": len(sel.slices), "split": sel.split} for name, sel in slices.items()},
        "stages": {},
    }
    for stage in stages(setup):
        backbone, load_report = stage_backbone(setup, stage, device)
        embeddings, fitting = {}, {}
        for name, sel in slices.items():
            for images, into in ((sel.slices, embeddings), (sel.fitting if probe_cv is None else None, fitting)):
                into[name] = None if images is None else dataset_embeddings(
                    backbone, images, spec.data.resize, mean, std, pooling=spec.diagnostics.pooling,
                    batch_size=batch_size,
                )  # fmt: skip
        del backbone
        probe_fit, probe_score = probe_rows(embeddings, fitting, spec.seed) if probe_cv is None else (None, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RankDeficiencyWarning)
            metrics = domain_metrics(
                embeddings, seed=spec.seed, pca_dim=spec.diagnostics.pca_dim, probe_cv=probe_cv,
                mmd_permutations=permutations, probe_fit=probe_fit, probe_score=probe_score,
            )  # fmt: skip
        notes = [str(w.message) for w in caught if issubclass(w.category, RankDeficiencyWarning)]
        for w in caught:  # anything else (e.g. a probe convergence warning) is shown as usual
            if not issubclass(w.category, RankDeficiencyWarning):
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        ratio = pca_plot(embeddings, out / f"pca_{stage}.png", f"{setup.entry.name} ({stage}, {spec.weights})")
        np.savez(out / f"embeddings_{stage}.npz", **embeddings)
        report["stages"][stage] = {
            "metrics": metrics,
            "pca_explained_variance": list(ratio),
            "fd_warnings": notes,
            "backbone_load": load_report,
        }
        for note in notes:
            print(f"warning ({stage}): {note}")
    (out / "metrics.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def format_report(report: dict[str, Any]) -> str:
    """The terminal summary: which datasets, then one row per metric and one column per stage."""
    sizes = ", ".join(f"{n} ({d['split']}, n={d['n']})" for n, d in report["datasets"].items())
    head = f"backbone {report['backbone']} ({report['weights']} weights), pooling {report['pooling']}: {sizes}"
    names = list(report["stages"])
    keys = list(report["stages"][names[0]]["metrics"])
    rows = [{"metric": k, **{s: f"{report['stages'][s]['metrics'][k]:.6g}" for s in names}} for k in keys]
    return head + "\n" + format_table(rows, ["metric", *names])
