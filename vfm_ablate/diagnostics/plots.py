"""Pictures of the domain gap: the joint 2-D PCA of datasets' embeddings, one colour per dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .measures import check_embeddings


def pca_plot(embeddings: dict[str, np.ndarray], path: str | Path, title: str) -> tuple[float, float]:
    """Joint 2-D PCA of all datasets saved as a PNG scatter coloured by dataset; returns the explained-variance
    ratios."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.decomposition import PCA

    data = check_embeddings(embeddings, min_rows=1)
    names = list(data)
    joint = np.concatenate([data[n] for n in names], axis=0)
    if min(joint.shape) < 2:
        raise DataError(f"pca_plot: a 2-D PCA needs >= 2 images and >= 2 features, got joint shape {joint.shape}")
    pca = PCA(n_components=2, svd_solver="full").fit(joint)
    ratio = (float(pca.explained_variance_ratio_[0]), float(pca.explained_variance_ratio_[1]))

    fig = Figure(figsize=(6, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    for i, name in enumerate(names):
        pts = pca.transform(data[name])
        ax.scatter(
            pts[:, 0],
            pts[:, 1],
            s=22,
            alpha=0.8,
            marker=markers[i % len(markers)],
            color=f"C{i % 10}",
            label=f"{name} (n={len(pts)})",
        )
    ax.set_xlabel(f"PC1 ({100 * ratio[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * ratio[1]:.1f}% of variance)")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return ratio


