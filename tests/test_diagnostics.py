"""Domain-mismatch math: Fréchet distance, linear probe, linear MMD, PCA plot, flat MLflow metrics."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import linalg

from vfm_ablate.diagnostics.measures import (
    FrechetResult,
    RankDeficiencyWarning,
    frechet_distance,
    frechet_distance_from_moments,
    linear_mmd,
    linear_probe,
)
from vfm_ablate.diagnostics.metrics import domain_metrics
from vfm_ablate.diagnostics.plots import pca_plot
from vfm_ablate.errors import DataError


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _reference_fd(x: np.ndarray, y: np.ndarray) -> float:
    """Independent reference (the classic FID code path): scipy.linalg.sqrtm of the non-symmetric S1 S2."""
    mu1, mu2 = x.mean(axis=0), y.mean(axis=0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    # as in the classic FID code: a singular product leaves a tiny imaginary part, which is dropped
    assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(covmean)))


# ------------------------------------------------------------------------------------ Fréchet: closed form


def test_fd_from_moments_matches_1d_closed_form():
    # 1-D Gaussians: FD = (mu1 - mu2)^2 + (sigma1 - sigma2)^2
    assert frechet_distance_from_moments([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0, rel=1e-12)


def test_fd_from_moments_matches_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    got = frechet_distance_from_moments(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(expected, rel=1e-12)


def test_fd_from_moments_matches_scaled_covariance_closed_form():
    # S2 = c^2 S1 (non-diagonal): (S1 S2)^1/2 = c S1, so FD = |dmu|^2 + (1 - c)^2 tr(S1)
    rng = np.random.default_rng(1)
    s1 = _random_spd(rng, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    c = 1.7
    expected = np.sum((mu1 - mu2) ** 2) + (1 - c) ** 2 * np.trace(s1)
    assert frechet_distance_from_moments(mu1, s1, mu2, c**2 * s1) == pytest.approx(expected, rel=1e-10)


def test_fd_from_moments_is_zero_for_identical_gaussians():
    rng = np.random.default_rng(2)
    s = _random_spd(rng, 10)
    mu = rng.normal(size=10)
    assert frechet_distance_from_moments(mu, s, mu, s) == pytest.approx(0.0, abs=1e-10 * np.trace(s))


def test_fd_of_large_gaussian_samples_approaches_the_population_value():
    rng = np.random.default_rng(3)
    d = 4
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    population = frechet_distance_from_moments(mu1, s1, mu2, s2)
    x = rng.multivariate_normal(mu1, s1, size=200_000)
    y = rng.multivariate_normal(mu2, s2, size=200_000)
    result = frechet_distance(x, y)
    assert isinstance(result, FrechetResult)
    assert result.value == pytest.approx(population, rel=0.02)
    assert (result.n_x, result.n_y, result.dim, result.effective_rank) == (200_000, 200_000, d, d)
    assert result.warnings == ()


def test_fd_is_zero_for_identical_sets():
    x = np.random.default_rng(4).normal(size=(300, 12)) * 3 + 1
    result = frechet_distance(x, x.copy())
    assert result.value == pytest.approx(0.0, abs=1e-9 * np.trace(np.cov(x, rowvar=False)))


# (50, 60, 8) ... (400, 400, 64): D x D moments route; (12, 300, 64): n_x n_y <= D^2, cross-Gram SVD route
@pytest.mark.parametrize("n_x,n_y,d", [(50, 60, 8), (200, 150, 32), (400, 400, 64), (12, 300, 64)])
def test_fd_agrees_with_scipy_sqrtm_reference(n_x, n_y, d):
    rng = np.random.default_rng(d)
    mix = rng.normal(size=(d, d))
    x = rng.normal(size=(n_x, d)) @ mix
    y = rng.normal(size=(n_y, d)) @ (mix + 0.3 * rng.normal(size=(d, d))) + rng.normal(size=d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficiencyWarning)
        assert frechet_distance(x, y).value == pytest.approx(_reference_fd(x, y), rel=1e-6)


def test_fd_of_few_wide_samples_matches_the_covariance_formula():
    # 20 VNC-like slices vs 165 Lucchi++-like ones in D=512: the fast cross-Gram route must equal the formula
    rng = np.random.default_rng(21)
    x, y = rng.normal(size=(165, 512)), rng.normal(size=(20, 512)) * 1.3 + 0.1
    with pytest.warns(RankDeficiencyWarning):
        fast = frechet_distance(x, y)
    slow = frechet_distance_from_moments(
        x.mean(axis=0), np.cov(x, rowvar=False), y.mean(axis=0), np.cov(y, rowvar=False)
    )
    assert fast.value == pytest.approx(slow, rel=1e-6)
    assert fast.effective_rank == 19


def test_fd_stays_finite_and_real_and_warns_when_n_below_d():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(20, 256)).astype(np.float32)  # VNC-like: 20 slices, many features
    y = (rng.normal(size=(17, 256)) + 0.2).astype(np.float32)
    with pytest.warns(RankDeficiencyWarning, match="effective rank 16"):
        result = frechet_distance(x, y)
    assert type(result.value) is float and np.isfinite(result.value) and result.value > 0
    assert result.effective_rank == 16  # min(20, 17) - 1: a sample covariance of n rows has rank n - 1
    assert len(result.warnings) == 1 and "n_x=20" in result.warnings[0] and "D=256" in result.warnings[0]


def test_fd_on_pca_reduced_features_has_that_dim_and_no_rank_warning():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(40, 100)), rng.normal(size=(30, 100)) + 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error", RankDeficiencyWarning)
        result = frechet_distance(x, y, pca_dim=10)
    assert result.dim == 10 and result.effective_rank == 10 and result.warnings == ()
    assert np.isfinite(result.value) and result.value > 0


def test_fd_rejects_bad_inputs_with_clear_errors():
    rng = np.random.default_rng(7)
    with pytest.raises(DataError, match="has 5 features but .* has 6"):
        frechet_distance(rng.normal(size=(10, 5)), rng.normal(size=(10, 6)))
    bad = rng.normal(size=(10, 5))
    bad[3, 2] = np.nan
    with pytest.raises(DataError, match="1 row\\(s\\) contain NaN"):
        frechet_distance(bad, rng.normal(size=(10, 5)))
    with pytest.raises(DataError, match="2-D array"):
        frechet_distance(rng.normal(size=10), rng.normal(size=(10, 5)))
    with pytest.raises(DataError, match="pca_dim=50 must be between 1 and"):
        frechet_distance(rng.normal(size=(10, 5)), rng.normal(size=(10, 5)), pca_dim=50)


# -------------------------------------------------------------------------------------------- probe


def test_probe_separates_two_clearly_different_domains():
    rng = np.random.default_rng(8)
    a = rng.normal(size=(60, 32))
    b = rng.normal(size=(60, 32)) + 3.0
    result = linear_probe({"a": a, "b": b}, seed=0)
    assert result.accuracy == pytest.approx(1.0) and result.roc_auc == pytest.approx(1.0)
    assert result.n_eval == 36 and result.n_train == 84  # 30 % of 120 held out, stratified


def test_probe_is_at_chance_on_two_samples_of_one_domain():
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    result = linear_probe({"a": a, "b": b}, seed=0)
    assert abs(result.accuracy - 0.5) < 0.1 and abs(result.roc_auc - 0.5) < 0.1
    cv = linear_probe({"a": a, "b": b}, seed=0, cv=5)
    assert cv.n_eval == 800 and abs(cv.accuracy - 0.5) < 0.1 and abs(cv.roc_auc - 0.5) < 0.1


def test_probe_is_seeded_and_seeds_change_the_split():
    rng = np.random.default_rng(10)
    a, b = rng.normal(size=(40, 8)), rng.normal(size=(40, 8)) + 0.3
    assert linear_probe({"a": a, "b": b}, seed=3) == linear_probe({"a": a, "b": b}, seed=3)
    results = {linear_probe({"a": a, "b": b}, seed=s).accuracy for s in range(6)}
    assert len(results) > 1


def test_probe_with_three_domains_uses_macro_one_vs_rest_auc():
    rng = np.random.default_rng(11)
    sets = {name: rng.normal(size=(30, 10)) + 4.0 * i for i, name in enumerate(["a", "b", "c"])}
    result = linear_probe(sets, seed=0, cv=3)
    assert result.accuracy == pytest.approx(1.0) and result.roc_auc == pytest.approx(1.0)
    sets["c"] = sets["b"] + rng.normal(size=(30, 10)) * 0.0  # b and c identical: only a is separable
    mixed = linear_probe(sets, seed=0, cv=3)
    assert mixed.accuracy < 0.85 and mixed.roc_auc < 0.95


def test_probe_refuses_sets_too_small_to_hold_out():
    rng = np.random.default_rng(12)
    with pytest.raises(DataError, match="embeddings\\['b'\\]: needs at least 2 rows"):
        linear_probe({"a": rng.normal(size=(20, 4)), "b": rng.normal(size=(1, 4))}, seed=0)
    with pytest.raises(DataError, match="test_size=0.1 on 6 rows .* cannot hold out"):
        linear_probe({"a": rng.normal(size=(3, 4)), "b": rng.normal(size=(3, 4))}, seed=0, test_size=0.1)
    with pytest.raises(DataError, match="cv=5 folds"):
        linear_probe({"a": rng.normal(size=(20, 4)), "b": rng.normal(size=(3, 4))}, seed=0, cv=5)
    with pytest.raises(DataError, match="at least two datasets"):
        linear_probe({"a": rng.normal(size=(20, 4))}, seed=0)


# ---------------------------------------------------------------------------------------------- MMD


def _naive_unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    kxx, kyy, kxy = x @ x.T, y @ y.T, x @ y.T
    m, n = len(x), len(y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()
    )


def test_linear_mmd_equals_kernel_matrix_estimator():
    rng = np.random.default_rng(13)
    x, y = rng.normal(size=(25, 40)) + 5.0, rng.normal(size=(31, 40)) * 2 + 5.2
    assert linear_mmd(x, y, permutations=0).mmd2 == pytest.approx(_naive_unbiased_mmd2(x, y), rel=1e-9)


def test_linear_mmd_estimates_squared_mean_shift_and_detects_it():
    rng = np.random.default_rng(14)
    shift = np.full(20, 0.25)  # |shift|^2 = 1.25
    x, y = rng.normal(size=(3000, 20)), rng.normal(size=(3000, 20)) + shift
    result = linear_mmd(x, y, permutations=200, seed=0)
    assert result.mmd2 == pytest.approx(1.25, rel=0.1)
    assert result.p_value == pytest.approx(1 / 201)  # no permutation reaches the observed value


def test_linear_mmd_is_unbiased_and_not_significant_within_one_domain():
    rng = np.random.default_rng(15)
    values, pvalues = [], []
    for _ in range(20):
        x, y = rng.normal(size=(20, 64)), rng.normal(size=(20, 64))
        r = linear_mmd(x, y, permutations=200, seed=1)
        values.append(r.mmd2)
        pvalues.append(r.p_value)
    # the plug-in |mean_x - mean_y|^2 would average 64 * (1/20 + 1/20) = 6.4 here
    assert abs(np.mean(values)) < 0.6
    assert np.mean(np.array(pvalues) < 0.05) <= 0.2


# ---------------------------------------------------------------------------------------------- PCA


def test_pca_plot_writes_png_and_returns_explained_variance(tmp_path):
    import matplotlib.image

    rng = np.random.default_rng(16)
    a = rng.normal(size=(30, 12)) * np.linspace(3, 0.1, 12)
    b = rng.normal(size=(20, 12)) * np.linspace(3, 0.1, 12) + 2
    out = tmp_path / "sub" / "pca.png"
    ratio = pca_plot({"a": a, "b": b}, out, "a vs b")
    joint = np.concatenate([a, b])
    s = np.linalg.svd(joint - joint.mean(axis=0), compute_uv=False)
    expected = (s**2 / np.sum(s**2))[:2]
    assert ratio == pytest.approx(tuple(expected), rel=1e-8)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(out)
    assert img.shape[0] > 100 and img.shape[1] > 100 and img[..., :3].std() > 0.01


# -------------------------------------------------------------------------------- flat MLflow metrics


def test_domain_metrics_two_datasets_flat_names_consistent_with_parts():
    rng = np.random.default_rng(17)
    emb = {"lucchi_pp": rng.normal(size=(30, 8)), "vnc": rng.normal(size=(25, 8)) + 2}
    metrics = domain_metrics(emb, seed=0)
    assert set(metrics) == {"fd", "fd_effective_rank", "mmd", "mmd_pvalue", "probe_acc", "probe_auc"}
    assert metrics["fd"] == pytest.approx(frechet_distance(emb["lucchi_pp"], emb["vnc"]).value)
    assert metrics["mmd"] == pytest.approx(_naive_unbiased_mmd2(emb["lucchi_pp"], emb["vnc"]))
    assert metrics["probe_acc"] == linear_probe(emb, seed=0).accuracy == 1.0
    assert all(isinstance(v, float) for v in metrics.values())


def test_domain_metrics_pairwise_names_are_valid_mlflow_metric_names():
    from mlflow.utils.validation import _validate_metric_name

    rng = np.random.default_rng(18)
    emb = {
        "lucchi_pp": rng.normal(size=(30, 8)),
        "vnc": rng.normal(size=(30, 8)) + 2,
        "vnc stack2": rng.normal(size=(30, 8)) + 2,
    }
    metrics = domain_metrics(emb, seed=0, mmd_permutations=50)
    assert {
        "fd/lucchi_pp_vs_vnc",
        "fd/lucchi_pp_vs_vnc_stack2",
        "fd/vnc_vs_vnc_stack2",
        "probe_acc",
        "probe_auc",
    } <= set(metrics)
    assert "fd" not in metrics and len([k for k in metrics if k.startswith("mmd_pvalue/")]) == 3
    assert metrics["fd/vnc_vs_vnc_stack2"] < metrics["fd/lucchi_pp_vs_vnc"]
    for key in metrics:
        _validate_metric_name(key)  # raises MlflowException on a name MLflow would reject
