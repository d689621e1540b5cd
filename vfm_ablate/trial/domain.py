"""Domain-mismatch diagnostics inside a trial: the backbone before training ("frozen") and after ("adapted") on
plain input, and the features the trained model actually uses after alignment: the head's input ("head_input",
after input- and feature-level alignment) and the head's bottleneck ("bottleneck", where loss-level alignment acts
by default)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import TrialSpec
from ..data.sources import LoadedDataset, Slice
from ..diagnostics.embeddings import dataset_embeddings
from ..diagnostics.measures import probe_rows
from ..diagnostics.metrics import domain_metrics
from ..diagnostics.plots import pca_plot
from ..errors import ConfigError
from ..models.registry import BackboneEntry
from ..models.segmenter import Segmenter
from .alignment import estimate_feature_statistics
from .forward import Forward, autocast
from .items import Item, TrainingItems, TrialData, normalisation, prepare_items


def diagnostic_names(spec: TrialSpec) -> list[str]:
    return spec.diagnostics.datasets or [*spec.data.test_datasets, *spec.data.unlabelled]


def diagnostic_slices(ds: LoadedDataset) -> tuple[list[Slice], list[Slice] | None]:
    """(measured, fitting) images of a diagnostic dataset. FD, MMD and the PCA measure its test split (else its
    unlabelled or training images); the linear probe is fitted on its training images (else its unlabelled ones)
    and scored on the measured ones, so no test image ever trains it. Without a test split the measured images are
    no test images and there are no others (None): `probe_rows` holds part of them out."""
    if not ds.test:
        return ds.unlabelled or ds.training, None
    fitting = ds.training or ds.unlabelled
    if not fitting:
        raise ConfigError(f"diagnostics: dataset '{ds.name}' has no training or unlabelled images to fit the probe on")
    return ds.test, fitting


def _measure(
    measured: dict[str, np.ndarray],
    fitting: dict[str, np.ndarray | None],
    spec: TrialSpec,
    stage: str,
    title: str,
    out_dir: Path,
) -> dict[str, float]:
    if len(measured) < 2:
        raise ConfigError(f"diagnostics need at least two datasets, got {list(measured)}")
    fit, score = probe_rows(measured, fitting, spec.seed)
    metrics = domain_metrics(
        measured, seed=spec.seed, pca_dim=spec.diagnostics.pca_dim, probe_fit=fit, probe_score=score
    )
    pca_plot(measured, out_dir / f"pca_{stage}.png", title=title)
    return {f"diag/{stage}/{k}": float(v) for k, v in metrics.items()}


def domain_diagnostics(
    model: Segmenter, spec: TrialSpec, entry: BackboneEntry, loaded: dict[str, LoadedDataset], stage: str, out_dir: Path
) -> dict[str, float]:
    """FD / probe / MMD between the diagnostic datasets' pooled embeddings, and a PCA plot `pca_<stage>.png`."""
    mean, std = normalisation(spec, entry)
    model.eval()

    def embed(slices: list[Slice]) -> np.ndarray:
        return dataset_embeddings(model.backbone, slices, spec.data.resize, mean, std, pooling=spec.diagnostics.pooling)

    measured: dict[str, np.ndarray] = {}
    fitting: dict[str, np.ndarray | None] = {}
    for name in diagnostic_names(spec):
        measured_slices, fitting_slices = diagnostic_slices(loaded[name])
        measured[name] = embed(measured_slices)
        fitting[name] = embed(fitting_slices) if fitting_slices is not None else None
    return _measure(measured, fitting, spec, stage, f"{spec.backbone} ({stage})", out_dir)


@dataclass
class DiagnosticItems:
    """Per diagnostic dataset the prepared images the head-side diagnostics measure, and the other images the probe
    (and a diagnostics-only dataset's feature statistics) are fitted on: never a test image (`TrainingItems`)."""

    measured: dict[str, list[Item]]
    fitting: TrainingItems  # only the datasets with other images to fit on (see `diagnostic_slices`)


def diagnostic_items(spec: TrialSpec, entry: BackboneEntry, data: TrialData) -> DiagnosticItems:
    """Per diagnostic dataset the images the head-side diagnostics embed, prepared exactly as the trial prepares
    its input (the same images as `domain_diagnostics`). A train / target dataset's fitting images are its own
    training images; a diagnostics-only dataset's are prepared here, and z-scored with their statistics."""
    own = data.own_images(spec)
    measured: dict[str, list[Item]] = {}
    fitting: dict[str, list[Item]] = {}
    for name in diagnostic_names(spec):
        measured_slices, fitting_slices = diagnostic_slices(data.loaded[name])
        align = data.align.with_statistics(name, [s.image for s in fitting_slices or measured_slices])
        tested = [it for it in data.test if it.dataset == name]
        if fitting_slices is not None and tested:
            measured[name] = tested  # already prepared (and, when frozen, their features cached by the test)
        else:
            measured[name] = prepare_items(measured_slices, name, "diag", entry, spec, align, labelled=False)
        if fitting_slices is not None:
            fitting[name] = own.get(name) or prepare_items(
                fitting_slices, name, "diagfit", entry, spec, align, labelled=False
            )
    return DiagnosticItems(measured, TrainingItems(fitting, data.loaded))


@torch.no_grad()
def head_diagnostics(
    fwd: Forward, spec: TrialSpec, data: TrialData, items: DiagnosticItems, out_dir: Path
) -> dict[str, float]:
    """FD / probe / MMD on the mean-pooled head input (after alignment) and head bottleneck of the trained model:
    `diag/head_input/*` and `diag/bottleneck/*`, with `pca_head_input.png` and `pca_bottleneck.png`."""
    own = data.own_images(spec)
    # diagnostics-only datasets: feature statistics of their fitting images (held-out ones: of their own images,
    # none of them a test image)
    statistics = {n: items.fitting.get(n) or its for n, its in items.measured.items() if n not in own}
    estimate_feature_statistics(fwd, TrainingItems(statistics, data.loaded))
    fwd.model.eval()

    def embed(its: list[Item]) -> tuple[np.ndarray, np.ndarray]:
        rows_in, rows_z = [], []
        for it in its:
            with autocast(fwd.device, fwd.precision):
                feats = fwd.head_input([it])
                z = fwd.model.head.bottleneck(feats)
            rows_in.append(feats.float().mean(dim=(2, 3)).cpu())
            rows_z.append(z.float().mean(dim=(2, 3)).cpu())
        return torch.cat(rows_in).numpy(), torch.cat(rows_z).numpy()

    measured = {name: embed(its) for name, its in items.measured.items()}
    fitting = {name: embed(items.fitting[name]) if name in items.fitting else None for name in items.measured}
    out: dict[str, float] = {}
    for i, stage in enumerate(("head_input", "bottleneck")):
        stage_fitting = {name: rows[i] if rows is not None else None for name, rows in fitting.items()}
        title = f"{spec.backbone} ({stage}, trained)"
        out.update(_measure({n: rows[i] for n, rows in measured.items()}, stage_fitting, spec, stage, title, out_dir))
    return out
