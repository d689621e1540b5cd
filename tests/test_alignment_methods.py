"""Each alignment method's defining property, on the method itself (vfm_ablate.alignment)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vfm_ablate.alignment.intensity import (
    ZScoring,
    clahe,
    intensity_statistics,
    match_histogram,
    reference_pixels,
)
from vfm_ablate.alignment.losses import (
    DomainClassifier,
    coral_loss,
    gaussian_mmd,
    grad_reverse,
    scheduled_weight,
)
from vfm_ablate.alignment.standardise import ChannelMoments, FeatureStandardiser
from vfm_ablate.data.transforms import IMAGENET_MEAN, IMAGENET_STD, image_to_tensor
from vfm_ablate.errors import DataError


def _cdf(values: np.ndarray) -> np.ndarray:
    counts = np.bincount(values.reshape(-1).astype(np.int64), minlength=256)
    return np.cumsum(counts) / counts.sum()


def _em_like(rng: np.random.Generator, shape: tuple[int, int], mean: float, std: float) -> np.ndarray:
    return np.clip(rng.normal(mean, std, shape), 0, 255).astype(np.uint8)


def test_histogram_matching_makes_the_cdf_equal_the_reference_datasets() -> None:
    rng = np.random.default_rng(0)
    reference = [_em_like(rng, (64, 80), 170, 25), _em_like(rng, (48, 64), 150, 30)]  # a dataset, two sizes
    image = _em_like(rng, (96, 96), 70, 12)  # a dark, low-contrast image of another "domain"
    matched = match_histogram(image, reference_pixels(reference, "ref"))
    assert matched.dtype == np.uint8 and matched.shape == image.shape
    ref_cdf = _cdf(np.concatenate([r.reshape(-1) for r in reference]))
    gap_before = np.abs(_cdf(image) - ref_cdf).max()
    gap_after = np.abs(_cdf(matched) - ref_cdf).max()  # Kolmogorov-Smirnov distance
    assert gap_before > 0.9 and gap_after < 0.03
    # monotone: the intensity order of the pixels is kept
    order = np.argsort(image.reshape(-1), kind="stable")
    assert (np.diff(matched.reshape(-1)[order].astype(int)) >= 0).all()


def test_histogram_matching_keeps_the_references_bit_depth_and_rejects_mixed_ones() -> None:
    rng = np.random.default_rng(1)
    ref16 = (rng.random((32, 32)) * 60000).astype(np.uint16)
    out = match_histogram(_em_like(rng, (16, 16), 100, 20), reference_pixels([ref16], "ref"))
    assert out.dtype == np.uint16 and out.max() > 255
    with pytest.raises(DataError, match="mix bit depths"):
        reference_pixels([ref16, _em_like(rng, (8, 8), 1, 1)], "alignment.reference 'x'")


def test_zscoring_gives_each_dataset_mean_0_std_1_on_its_own_images() -> None:
    rng = np.random.default_rng(2)
    datasets = {
        "dark": [_em_like(rng, (40, 40), 60, 10) for _ in range(3)],
        "bright": [_em_like(rng, (40, 40), 190, 30)],
    }
    stats = {name: intensity_statistics(images, name) for name, images in datasets.items()}
    align = ZScoring(stats)
    for name, images in datasets.items():
        tensors = [
            image_to_tensor(im, im.shape, *align.normalisation(name, im.dtype, (IMAGENET_MEAN, IMAGENET_STD)))
            for im in images
        ]
        pixels = torch.cat([t.reshape(3, -1) for t in tensors], dim=1)
        assert pixels.mean(dim=1).abs().max() < 1e-4
        assert (pixels.std(dim=1, unbiased=False) - 1).abs().max() < 1e-4
    with pytest.raises(DataError, match="no intensity statistics for dataset 'other'"):
        align.normalisation("other", np.uint8, (IMAGENET_MEAN, IMAGENET_STD))
    with pytest.raises(DataError, match="same value"):
        intensity_statistics([np.full((4, 4), 7, np.uint8)], "flat")


def test_clahe_raises_local_contrast_more_with_a_higher_clip_limit() -> None:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:128, 0:128]
    image = (100 + 8 * np.sin(xx / 6.0) * (yy > 64) + rng.normal(0, 1, (128, 128))).clip(0, 255).astype(np.uint8)
    low, high = clahe(image, 0.005, None), clahe(image, 0.05, None)
    assert low.dtype == np.uint8 and low.shape == image.shape
    assert image.std() < low.std() < high.std()
    # each tile's mapping is monotone: brighter input never gets darker output inside one tile
    tile = slice(70, 86), slice(70, 86)
    order = np.argsort(image[tile].reshape(-1), kind="stable")
    assert np.corrcoef(image[tile].reshape(-1)[order], high[tile].reshape(-1)[order])[0, 1] > 0.9


def test_feature_standardisation_gives_each_dataset_mean_0_std_1_per_channel() -> None:
    torch.manual_seed(0)
    grids = {  # two "datasets" of B x D x h x w grids with different per-channel means and scales
        "a": [torch.randn(2, 5, 4, 6) * torch.linspace(0.5, 3, 5)[None, :, None, None] + 4 for _ in range(3)],
        "b": [torch.randn(1, 5, 3, 3) * 0.1 - 2 for _ in range(4)],
    }
    standardiser = FeatureStandardiser(["a", "b"], 5)
    for name, batches in grids.items():
        moments = ChannelMoments(5)
        for g in batches:
            moments.add(g)
        standardiser.set_statistics(name, *moments.result())
    for name, batches in grids.items():
        out = torch.cat([standardiser(g, [name] * len(g)).transpose(0, 1).reshape(5, -1) for g in batches], dim=1)
        assert out.mean(dim=1).abs().max() < 1e-5
        assert (out.std(dim=1, unbiased=False) - 1).abs().max() < 1e-3
    # one batch mixing datasets: each row is standardised with its own dataset's statistics
    a_row, b_row = grids["a"][0][:1, :, :3, :3], grids["b"][0]
    mixed = standardiser(torch.cat([a_row, b_row]), ["a", "b"])
    assert torch.equal(mixed[:1], standardiser(a_row, ["a"])) and torch.equal(mixed[1:], standardiser(b_row, ["b"]))
    with pytest.raises(DataError, match="never estimated"):
        FeatureStandardiser(["c"], 5)(torch.zeros(1, 5, 2, 2), ["c"])


def test_gradient_reversal_is_the_identity_forward_and_negates_and_scales_gradients_by_lambda() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(3, 4)
    y = grad_reverse(x, 0.3)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert torch.allclose(x.grad, -0.3 * w)


def test_mmd_is_zero_for_identical_batches_and_matches_the_kernel_formula() -> None:
    torch.manual_seed(1)
    x = torch.randn(6, 8)
    assert gaussian_mmd(x, x.clone()).item() == 0.0
    assert gaussian_mmd(x, x.clone(), bandwidth=2.0).item() == 0.0
    y = torch.randn(5, 8) + 1.5
    sigma = 1.7
    xa, ya = x.double().numpy(), y.double().numpy()

    def k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * sigma**2))

    expected = k(xa, xa).mean() + k(ya, ya).mean() - 2 * k(xa, ya).mean()
    assert gaussian_mmd(x, y, bandwidth=sigma).item() == pytest.approx(expected, rel=1e-5)
    assert gaussian_mmd(x, y).item() > gaussian_mmd(x, x + 0.01).item() > 0


def test_coral_is_zero_for_equal_covariances_and_matches_its_formula() -> None:
    torch.manual_seed(2)
    x = torch.randn(20, 4, dtype=torch.float64)
    assert coral_loss(x, x + 5.0).item() == pytest.approx(0.0, abs=1e-12)  # same covariance, other mean
    y = torch.randn(15, 4, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=torch.float64)
    cx, cy = np.cov(x.numpy(), rowvar=False), np.cov(y.numpy(), rowvar=False)
    assert coral_loss(x, y).item() == pytest.approx(((cx - cy) ** 2).sum() / (4 * 16), rel=1e-10)
    with pytest.raises(DataError, match="at least 2 rows"):
        coral_loss(x[:1], y)


def test_the_dann_schedule_ramps_from_zero_to_lambda() -> None:
    assert scheduled_weight(0.5, "constant", 3.2, 10) == 0.5
    assert scheduled_weight(0.5, "dann", 0.0, 10) == 0.0
    assert scheduled_weight(0.5, "dann", 5.0, 10) == pytest.approx(0.5 * (2 / (1 + math.exp(-5)) - 1))
    assert scheduled_weight(0.5, "dann", 30.0, 10) == pytest.approx(0.5 * (2 / (1 + math.exp(-10)) - 1))
    ramp = [scheduled_weight(1.0, "dann", e, 10) for e in range(12)]
    assert ramp == sorted(ramp)


def test_the_domain_classifier_learns_to_tell_domains_apart_while_reversed_features_move_to_confuse_it() -> None:
    torch.manual_seed(3)
    feats = torch.cat([torch.randn(16, 6) + 2, torch.randn(16, 6) - 2]).requires_grad_(True)
    labels = torch.cat([torch.zeros(16), torch.ones(16)]).long()
    clf = DomainClassifier(6, 2, hidden=16)
    loss = torch.nn.functional.cross_entropy(clf(grad_reverse(feats, 1.0)), labels)
    loss.backward()
    # the classifier's own gradient lowers its loss; the features' (reversed) gradient raises it
    with torch.no_grad():
        step = 1e-2
        moved = feats - step * feats.grad
        before = torch.nn.functional.cross_entropy(clf(feats), labels)
        after = torch.nn.functional.cross_entropy(clf(moved), labels)
    assert after > before
    with pytest.raises(DataError, match="at least 2 domains"):
        DomainClassifier(6, 1)
