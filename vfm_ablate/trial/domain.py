"""Domain-mismatch diagnostics inside a trial: the backbone before training ("frozen") and after ("adapted")."""

from __future__ import annotations

from pathlib import Path

from ..config import TrialSpec
from ..data.sources import LoadedDataset
from ..diagnostics.embeddings import dataset_embeddings
from ..diagnostics.measures import domain_metrics, pca_plot
from ..errors import ConfigError
from ..models.registry import BackboneEntry
from ..models.segmenter import Segmenter
from .items import normalisation


def domain_diagnostics(
    model: Segmenter, spec: TrialSpec, entry: BackboneEntry, loaded: dict[str, LoadedDataset], stage: str, out_dir: Path
) -> dict[str, float]:
    """FD / probe / MMD between the diagnostic datasets' pooled embeddings, and a PCA plot `pca_<stage>.png`."""
    names = spec.diagnostics.datasets or [*spec.data.test_datasets, *spec.data.unlabelled]
    mean, std = normalisation(spec, entry)
    model.eval()
    embeddings = {}
    for name in names:
        ds = loaded[name]
        slices = ds.test or ds.unlabelled or ds.train
        embeddings[name] = dataset_embeddings(
            model.backbone, slices, spec.data.resize, mean, std, pooling=spec.diagnostics.pooling
        )
    if len(embeddings) < 2:
        raise ConfigError(f"diagnostics need at least two datasets, got {names}")
    metrics = domain_metrics(embeddings, seed=spec.seed, pca_dim=spec.diagnostics.pca_dim)
    pca_plot(embeddings, out_dir / f"pca_{stage}.png", title=f"{spec.backbone} ({stage})")
    return {f"diag/{stage}/{k}": float(v) for k, v in metrics.items()}
