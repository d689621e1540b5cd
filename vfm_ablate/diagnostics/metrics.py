"""The domain measures of several datasets as flat MLflow metric names (`fd`, `probe_acc`, `mmd/<a>_vs_<b>`...)."""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from ..metric_names import metric_token
from .measures import check_embeddings, frechet_distance, linear_mmd, linear_probe


def pair_key(a: str, b: str) -> str:
    """Name part for one pair of datasets, e.g. 'lucchi_pp_vs_vnc' ('~' is not allowed in MLflow names)."""
    return f"{metric_token(a)}_vs_{metric_token(b)}"


def domain_metrics(
    embeddings: dict[str, np.ndarray],
    seed: int,
    *,
    pca_dim: int | None = None,
    probe_test_size: float = 0.3,
    probe_cv: int | None = None,
    mmd_permutations: int = 1000,
    probe_fit: dict[str, np.ndarray] | None = None,
    probe_score: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """All diagnostics as flat MLflow metric names.

    Two datasets: fd, fd_effective_rank, probe_acc, probe_auc, mmd, mmd_pvalue.
    More: fd/<a>_vs_<b>, fd_effective_rank/<a>_vs_<b>, mmd/<a>_vs_<b>, mmd_pvalue/<a>_vs_<b> for every pair,
    plus one probe over all datasets (probe_acc, probe_auc: one-vs-rest macro AUC). With `probe_fit`, the probe is
    fitted on those rows and scored on `probe_score` (default: `embeddings`) instead of holding out part of them.
    """
    data = check_embeddings(embeddings)
    names = list(data)
    tokens = [metric_token(n) for n in names]
    if len(set(tokens)) != len(tokens):
        raise DataError(f"dataset names {names} collide once made MLflow-safe ({tokens})")
    out: dict[str, float] = {}
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    for a, b in pairs:
        suffix = "" if len(pairs) == 1 else f"/{pair_key(a, b)}"
        fd = frechet_distance(data[a], data[b], pca_dim=pca_dim)
        mmd = linear_mmd(data[a], data[b], permutations=mmd_permutations, seed=seed)
        out[f"fd{suffix}"] = fd.value
        out[f"fd_effective_rank{suffix}"] = float(fd.effective_rank)
        out[f"mmd{suffix}"] = mmd.mmd2
        if mmd.p_value is not None:
            out[f"mmd_pvalue{suffix}"] = mmd.p_value
    if probe_fit is not None:
        probe = linear_probe(probe_score if probe_score is not None else data, seed=seed, fit=probe_fit)
    else:
        probe = linear_probe(data, seed=seed, test_size=probe_test_size, cv=probe_cv)
    out["probe_acc"] = probe.accuracy
    out["probe_auc"] = probe.roc_auc
    return out
