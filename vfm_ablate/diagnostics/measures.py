"""Domain-mismatch maths on image embeddings: Fréchet distance, linear probe, linear-kernel MMD.

Everything here works on plain ``n x D`` arrays (one row per image), so the same code serves the
standalone ``vfm-ablate diagnose`` command and the in-trial diagnostics (frozen and adapted backbone). The plot
is in diagnostics/plots.py, the measures as flat metric names in diagnostics/metrics.py.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import DataError


class RankDeficiencyWarning(UserWarning):
    """Fewer samples than dimensions: covariance estimates are singular, FD is computed on their span only."""


@dataclass(frozen=True)
class FrechetResult:
    """Fréchet distance plus the facts needed to judge it (sample sizes, dimension, effective rank)."""

    value: float
    effective_rank: int  # min of the numerical ranks of the two covariance estimates
    n_x: int
    n_y: int
    dim: int  # feature dimension the distance was computed in (after PCA when pca_dim is set)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProbeResult:
    """Held-out (or out-of-fold) performance of a logistic regression that predicts the dataset label."""

    accuracy: float
    roc_auc: float  # binary AUC for two datasets, one-vs-rest macro AUC for more
    n_train: int  # rows used to fit (per fold for cross-validation)
    n_eval: int  # rows the metrics are computed on
    method: str  # "holdout(test_size=0.3)" or "cv(k=5)"


@dataclass(frozen=True)
class MMDResult:
    """Unbiased linear-kernel MMD^2 and its permutation-test p-value (None when no permutations ran)."""

    mmd2: float
    p_value: float | None
    permutations: int


# --------------------------------------------------------------------------------------------- checks


def _as_matrix(a: np.ndarray, what: str, min_rows: int = 2) -> np.ndarray:
    """One validation for every embedding matrix: 2-D, enough rows, finite; returned as float64."""
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise DataError(f"{what}: expected a 2-D array (images x features), got shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise DataError(f"{what}: needs at least {min_rows} rows (images), got {arr.shape[0]}")
    if arr.shape[1] < 1:
        raise DataError(f"{what}: has no feature columns (shape {arr.shape})")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise DataError(f"{what}: {bad} row(s) contain NaN or Inf values")
    return arr


def _same_dim(x: np.ndarray, y: np.ndarray, xs: str, ys: str) -> None:
    if x.shape[1] != y.shape[1]:
        raise DataError(f"{xs} has {x.shape[1]} features but {ys} has {y.shape[1]}; embeddings must share D")


def check_embeddings(embeddings: dict[str, np.ndarray], min_rows: int = 2) -> dict[str, np.ndarray]:
    if len(embeddings) < 2:
        raise DataError(f"domain diagnostics need at least two datasets, got {sorted(embeddings)}")
    out = {name: _as_matrix(v, f"embeddings['{name}']", min_rows) for name, v in embeddings.items()}
    names = list(out)
    for other in names[1:]:
        _same_dim(out[names[0]], out[other], f"embeddings['{names[0]}']", f"embeddings['{other}']")
    return out


# ------------------------------------------------------------------------------------------ Fréchet


def _sym_sqrt_psd(s: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix by eigendecomposition; tiny negative eigenvalues clipped to 0."""
    vals, vecs = np.linalg.eigh((s + s.T) / 2.0)
    vals = np.clip(vals, 0.0, None)
    return (vecs * np.sqrt(vals)) @ vecs.T


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr((S1 S2)^1/2) via the symmetric sqrt(S1) S2 sqrt(S1), which has the same eigenvalues and stays real."""
    r1 = _sym_sqrt_psd(s1)
    m = r1 @ s2 @ r1
    vals = np.linalg.eigvalsh((m + m.T) / 2.0)
    return float(np.sqrt(np.clip(vals, 0.0, None)).sum())


def frechet_distance_from_moments(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """FD = ||mu1-mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) between two Gaussians given by their moments."""
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    s1 = np.atleast_2d(np.asarray(s1, dtype=np.float64))
    s2 = np.atleast_2d(np.asarray(s2, dtype=np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise DataError(
            f"Fréchet moments must be mu (D,) and S (D, D) with one D; got mu1 {mu1.shape}, S1 {s1.shape}, "
            f"mu2 {mu2.shape}, S2 {s2.shape}"
        )
    for name, arr in (("mu1", mu1), ("S1", s1), ("mu2", mu2), ("S2", s2)):
        if not np.isfinite(arr).all():
            raise DataError(f"Fréchet moments: {name} contains NaN or Inf values")
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * _trace_sqrt_product(s1, s2))
    # rounding can leave a value like -1e-13 for identical moments; the distance itself is >= 0
    return max(value, 0.0)


def _pca_project(arrays: list[np.ndarray], dim: int, what: str) -> list[np.ndarray]:
    """Project several sets with one PCA fitted on their union (so they share the reduced axes)."""
    from sklearn.decomposition import PCA

    joint = np.concatenate(arrays, axis=0)
    limit = min(joint.shape)
    if dim < 1 or dim > limit:
        raise DataError(f"{what}: pca_dim={dim} must be between 1 and min(total images, features) = {limit}")
    pca = PCA(n_components=dim, svd_solver="full").fit(joint)
    return [pca.transform(a) for a in arrays]


def frechet_distance(x: np.ndarray, y: np.ndarray, *, pca_dim: int | None = None) -> FrechetResult:
    """Fréchet distance between two embedding sets (rows = images), optionally after a joint PCA to `pca_dim`.

    Warns (RankDeficiencyWarning, also listed in the result) when a set has no more rows than dimensions:
    its covariance is then singular and the distance only reflects its (effective-rank) span.
    """
    x = _as_matrix(x, "frechet_distance x")
    y = _as_matrix(y, "frechet_distance y")
    _same_dim(x, y, "frechet_distance x", "frechet_distance y")
    if pca_dim is not None:
        x, y = _pca_project([x, y], pca_dim, "frechet_distance")
    dim = x.shape[1]
    n_x, n_y = x.shape[0], y.shape[0]
    # samples as rows of A, B with S1 = A^T A, S2 = B^T B (centred, scaled by 1/sqrt(n-1))
    a = (x - x.mean(axis=0)) / math.sqrt(n_x - 1)
    b = (y - y.mean(axis=0)) / math.sqrt(n_y - 1)
    eff = min(int(np.linalg.matrix_rank(a)), int(np.linalg.matrix_rank(b)))
    notes: list[str] = []
    if n_x <= dim or n_y <= dim:
        msg = (
            f"Fréchet distance with n_x={n_x}, n_y={n_y} samples in D={dim} dimensions: "
            f"covariances are singular (effective rank {eff}); compare values only at equal n and D, "
            f"or set pca_dim below {min(n_x, n_y)}"
        )
        notes.append(msg)
        warnings.warn(msg, RankDeficiencyWarning, stacklevel=2)
    if n_x * n_y <= dim * dim:
        # few images, wide features (20 VNC slices, D=1536): the nonzero eigenvalues of S1 S2 are those of
        # (A B^T)(A B^T)^T, so Tr((S1 S2)^1/2) is the sum of the singular values of the n_x x n_y matrix A B^T:
        # exact, real, and O(n_x n_y D) instead of two D x D eigendecompositions
        diff = x.mean(axis=0) - y.mean(axis=0)
        cross = float(np.linalg.svd(a @ b.T, compute_uv=False).sum())
        value = max(float(diff @ diff + np.sum(a * a) + np.sum(b * b) - 2.0 * cross), 0.0)
    else:
        value = frechet_distance_from_moments(x.mean(axis=0), a.T @ a, y.mean(axis=0), b.T @ b)
    return FrechetResult(
        value=value, effective_rank=eff, n_x=x.shape[0], n_y=y.shape[0], dim=dim, warnings=tuple(notes)
    )


# ---------------------------------------------------------------------------------------- the probe


def linear_probe(
    embeddings: dict[str, np.ndarray],
    seed: int,
    test_size: float = 0.3,
    cv: int | None = None,
    *,
    fit: dict[str, np.ndarray] | None = None,
) -> ProbeResult:
    """How well a standardised logistic regression tells the datasets apart (1.0 = fully separable).

    Held-out: one stratified, seeded split with `test_size`. With `cv=k`: stratified k-fold, metrics on the
    pooled out-of-fold probabilities (every row is scored once, useful for small sets such as 20 slices).
    With `fit` (other rows of the same datasets, e.g. their training images): fitted on those and scored on every
    row of `embeddings` (a trial's test images never train the probe).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = check_embeddings(embeddings)
    names = list(data)
    x = np.concatenate([data[n] for n in names], axis=0)
    y = np.concatenate([np.full(len(data[n]), i) for i, n in enumerate(names)])
    k = len(names)
    smallest = min(len(v) for v in data.values())
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=seed))

    if fit is not None:
        fitted = check_embeddings(fit)
        if list(fitted) != names:
            raise DataError(f"linear_probe: fit rows of {list(fitted)} but scored rows of {names}: other datasets")
        x_fit = np.concatenate([fitted[n] for n in names], axis=0)
        y_fit = np.concatenate([np.full(len(fitted[n]), i) for i, n in enumerate(names)])
        proba = model.fit(x_fit, y_fit).predict_proba(x)
        y_eval, n_train, method = y, len(y_fit), "fit on separate rows"
    elif cv is not None:
        if cv < 2 or cv > smallest:
            raise DataError(
                f"linear_probe: cv={cv} folds need 2 <= cv <= the smallest dataset's size ({smallest}, "
                f"sizes {_sizes(data)})"
            )
        folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
        proba = cross_val_predict(model, x, y, cv=folds, method="predict_proba")
        y_eval, n_train, method = y, len(y) - len(y) // cv, f"cv(k={cv})"
    else:
        if not 0.0 < test_size < 1.0:
            raise DataError(f"linear_probe: test_size must be in (0, 1), got {test_size}")
        n_test = math.ceil(test_size * len(y))
        if n_test < k or len(y) - n_test < k or smallest < 2:
            raise DataError(
                f"linear_probe: test_size={test_size} on {len(y)} rows (sizes {_sizes(data)}) cannot hold out "
                f"and train on every dataset; each needs >= 2 rows, or use cv"
            )
        x_tr, x_te, y_tr, y_eval = train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed)
        proba = model.fit(x_tr, y_tr).predict_proba(x_te)
        n_train, method = len(y_tr), f"holdout(test_size={test_size})"

    accuracy = float(accuracy_score(y_eval, proba.argmax(axis=1)))
    if k == 2:
        auc = float(roc_auc_score(y_eval, proba[:, 1]))
    else:
        auc = float(roc_auc_score(y_eval, proba, multi_class="ovr", average="macro", labels=list(range(k))))
    return ProbeResult(accuracy=accuracy, roc_auc=auc, n_train=n_train, n_eval=len(y_eval), method=method)


PROBE_HOLDOUT = 0.3  # share of a dataset's rows that scores the probe when no other rows fit it
PROBE_STREAM = 4  # rng stream tag of that hold-out (seeded per seed)


def probe_rows(
    measured: dict[str, np.ndarray], fitting: dict[str, np.ndarray | None], seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(fit, score) rows of the probe per dataset. With fitting rows (other images than the measured ones: a
    dataset's training split against its test split) it fits on them and scores every measured row; without (None)
    a seeded `PROBE_HOLDOUT` of the measured rows scores and the rest fits. No row is ever both."""
    fit, score = {}, {}
    for name, rows in measured.items():
        own = fitting.get(name)
        if own is not None:
            fit[name], score[name] = own, rows
            continue
        if len(rows) < 2:
            raise DataError(f"linear probe: dataset '{name}' needs at least 2 rows to fit and score the probe")
        order = np.random.default_rng([seed, PROBE_STREAM]).permutation(len(rows))
        n_score = min(len(rows) - 1, max(1, round(PROBE_HOLDOUT * len(rows))))
        score[name], fit[name] = rows[np.sort(order[:n_score])], rows[np.sort(order[n_score:])]
    return fit, score


def _sizes(data: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{n}={len(v)}" for n, v in data.items())


# ---------------------------------------------------------------------------------------------- MMD


def linear_mmd(x: np.ndarray, y: np.ndarray, *, permutations: int = 1000, seed: int = 0) -> MMDResult:
    """Unbiased linear-kernel MMD^2 between two sets, with a label-permutation p-value.

    The population value is ||mu_x - mu_y||^2 (FD's mean term); the unbiased estimator removes the
    +tr(S_x)/n_x + tr(S_y)/n_y upward bias that the plug-in mean difference has for small sets.
    """
    x = _as_matrix(x, "linear_mmd x")
    y = _as_matrix(y, "linear_mmd y")
    _same_dim(x, y, "linear_mmd x", "linear_mmd y")
    if permutations < 0:
        raise DataError(f"linear_mmd: permutations must be >= 0, got {permutations}")
    z = np.concatenate([x, y], axis=0)
    z = z - z.mean(axis=0)  # the statistic is translation-invariant; centring keeps the sums small
    m, n = len(x), len(y)
    sq = np.einsum("ij,ij->i", z, z)
    total = z.sum(axis=0)
    observed = _mmd2_from_sums(z[:m].sum(axis=0), total, sq[:m].sum(), sq.sum(), m, n)
    if permutations == 0:
        return MMDResult(mmd2=float(observed), p_value=None, permutations=0)

    rng = np.random.default_rng(seed)
    exceed = 0
    chunk = max(1, min(permutations, 2_000_000 // max(1, len(z))))
    done = 0
    while done < permutations:
        p = min(chunk, permutations - done)
        # each row of `take` is a random subset of size m: the permuted "x" group
        order = np.argsort(rng.random((p, len(z))), axis=1)[:, :m]
        take = np.zeros((p, len(z)))
        np.put_along_axis(take, order, 1.0, axis=1)
        stats = _mmd2_from_sums(take @ z, total, take @ sq, sq.sum(), m, n)
        exceed += int((stats >= observed - 1e-12 * abs(observed)).sum())
        done += p
    p_value = (1 + exceed) / (1 + permutations)
    return MMDResult(mmd2=float(observed), p_value=float(p_value), permutations=permutations)


def _mmd2_from_sums(sx, total, sqx, sq_total, m: int, n: int):
    """Unbiased MMD^2 with k(a,b)=a.b from group sums (works on one group or a batch of permuted groups)."""
    sx = np.asarray(sx)
    sy = total - sx
    sqy = sq_total - sqx
    xx = (np.einsum("...d,...d->...", sx, sx) - sqx) / (m * (m - 1))
    yy = (np.einsum("...d,...d->...", sy, sy) - sqy) / (n * (n - 1))
    xy = np.einsum("...d,...d->...", sx, sy) / (m * n)
    return xx + yy - 2.0 * xy
