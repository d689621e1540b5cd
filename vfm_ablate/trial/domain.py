"""Domain-mismatch diagnostics inside a trial: the backbone before training ("frozen") and after ("adapted") on
plain input, and the features the trained model actually uses after alignment: the head's input ("head_input",
after input- and feature-level alignment) and the head's bottleneck ("bottleneck", where loss-level alignment acts
by default)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import TrialSpec
from ..data.sources import LoadedDataset
from ..diagnostics.embeddings import dataset_embeddings
from ..diagnostics.metrics import domain_metrics
from ..diagnostics.plots import pca_plot
from ..errors import ConfigError
from ..models.registry import BackboneEntry
from ..models.segmenter import Segmenter
from .alignment import estimate_feature_statistics
from .forward import Forward, autocast
from .items import Item, TrialData, normalisation, prepare_items


def diagnostic_names(spec: TrialSpec) -> list[str]:
    return spec.diagnostics.datasets or [*spec.data.test_datasets, *spec.data.unlabelled]


def domain_diagnostics(
    model: Segmenter, spec: TrialSpec, entry: BackboneEntry, loaded: dict[str, LoadedDataset], stage: str, out_dir: Path
) -> dict[str, float]:
    """FD / probe / MMD between the diagnostic datasets' pooled embeddings, and a PCA plot `pca_<stage>.png`."""
    names = diagnostic_names(spec)
    mean, std = normalisation(spec, entry)
    model.eval()
    embeddings = {}
    for name in names:
        ds = loaded[name]
        slices = ds.test or ds.unlabelled or ds.training
        embeddings[name] = dataset_embeddings(
            model.backbone, slices, spec.data.resize, mean, std, pooling=spec.diagnostics.pooling
        )
    if len(embeddings) < 2:
        raise ConfigError(f"diagnostics need at least two datasets, got {names}")
    metrics = domain_metrics(embeddings, seed=spec.seed, pca_dim=spec.diagnostics.pca_dim)
    pca_plot(embeddings, out_dir / f"pca_{stage}.png", title=f"{spec.backbone} ({stage})")
    return {f"diag/{stage}/{k}": float(v) for k, v in metrics.items()}


def diagnostic_items(spec: TrialSpec, entry: BackboneEntry, data: TrialData) -> dict[str, list[Item]]:
    """Per diagnostic dataset the images the head-side diagnostics embed, prepared exactly as the trial prepares
    its input (the same images as `domain_diagnostics`: the test split, else the unlabelled or training images).
    A diagnostics-only dataset is z-scored with its own images' statistics."""
    out: dict[str, list[Item]] = {}
    for name in diagnostic_names(spec):
        ds = data.loaded[name]
        tested = [it for it in data.test if it.dataset == name]
        if ds.test and tested:
            out[name] = tested  # already prepared (and, when frozen, their features cached by the test)
            continue
        slices = ds.test or ds.unlabelled or ds.training
        align = data.align.with_statistics(name, [s.image for s in slices])
        out[name] = prepare_items(slices, name, "diag", entry, spec, align, labelled=False)
    return out


@torch.no_grad()
def head_diagnostics(
    fwd: Forward, spec: TrialSpec, data: TrialData, items: dict[str, list[Item]], out_dir: Path
) -> dict[str, float]:
    """FD / probe / MMD on the mean-pooled head input (after alignment) and head bottleneck of the trained model:
    `diag/head_input/*` and `diag/bottleneck/*`, with `pca_head_input.png` and `pca_bottleneck.png`."""
    if len(items) < 2:
        raise ConfigError(f"diagnostics need at least two datasets, got {list(items)}")
    own = data.own_images(spec)
    missing = {name: its for name, its in items.items() if name not in own}
    estimate_feature_statistics(fwd, missing)  # diagnostics-only datasets: statistics of their own images
    fwd.model.eval()
    head_input: dict[str, np.ndarray] = {}
    bottleneck: dict[str, np.ndarray] = {}
    for name, its in items.items():
        rows_in, rows_z = [], []
        for it in its:
            with autocast(fwd.device, fwd.precision):
                feats = fwd.head_input([it])
                z = fwd.model.head.bottleneck(feats)
            rows_in.append(feats.float().mean(dim=(2, 3)).cpu())
            rows_z.append(z.float().mean(dim=(2, 3)).cpu())
        head_input[name] = torch.cat(rows_in).numpy()
        bottleneck[name] = torch.cat(rows_z).numpy()
    out: dict[str, float] = {}
    for stage, embeddings in (("head_input", head_input), ("bottleneck", bottleneck)):
        metrics = domain_metrics(embeddings, seed=spec.seed, pca_dim=spec.diagnostics.pca_dim)
        pca_plot(embeddings, out_dir / f"pca_{stage}.png", title=f"{spec.backbone} ({stage}, trained)")
        out.update({f"diag/{stage}/{k}": float(v) for k, v in metrics.items()})
    return out
