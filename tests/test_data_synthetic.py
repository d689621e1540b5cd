"""The synthetic EM-like generator: deterministic, any size, two visibly different domains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vfm_ablate.data.synthetic import generate_slices, write_folder
from vfm_ablate.errors import DataError


def test_deterministic_per_seed_and_independent_of_count() -> None:
    a = generate_slices("a", 3, (64, 80), seed=7)
    b = generate_slices("a", 5, (64, 80), seed=7)
    c = generate_slices("a", 3, (64, 80), seed=8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.mask, y.mask)
    assert not np.array_equal(a[0].image, c[0].image)
    assert not np.array_equal(a[0].image, a[1].image)
    test = generate_slices("a", 3, (64, 80), seed=7, split="test")
    assert not np.array_equal(a[0].image, test[0].image)


@pytest.mark.parametrize("size", [(16, 16), (48, 130), (200, 96)])
def test_any_size(size: tuple[int, int]) -> None:
    for s in generate_slices("b", 2, size, seed=0):
        assert s.image.shape == size and s.image.dtype == np.uint8
        assert s.mask.shape == size and s.mask.dtype == bool


def test_masks_mark_darker_textured_ellipses() -> None:
    for domain in ("a", "b"):
        slices = generate_slices(domain, 6, (96, 96), seed=1)
        fg = [s.mask.mean() for s in slices]
        assert all(0.005 < f < 0.4 for f in fg), fg
        inside = np.concatenate([s.image[s.mask] for s in slices]).astype(float)
        outside = np.concatenate([s.image[~s.mask] for s in slices]).astype(float)
        assert inside.mean() < outside.mean() - 10  # mitochondria are darker than cytoplasm


def test_domains_differ_in_contrast_noise_and_texture() -> None:
    a = generate_slices("a", 4, (128, 128), seed=0)
    b = generate_slices("b", 4, (128, 128), seed=0)

    def stats(slices):
        imgs = np.stack([s.image.astype(float) for s in slices])
        brightness = imgs.mean()
        contrast = np.mean([np.percentile(i, 95) - np.percentile(i, 5) for i in imgs])
        # pixel-to-pixel differences measure noise / fine grain
        grain = np.mean(np.abs(np.diff(imgs, axis=-1)))
        return brightness, contrast, grain

    (ba, ca, ga), (bb, cb, gb) = stats(a), stats(b)
    assert ba - bb > 40  # domain a is brighter
    assert ca > cb + 10  # and has more contrast
    assert gb > 1.5 * ga  # domain b is noisier / grainier


def test_unknown_domain_and_tiny_size() -> None:
    with pytest.raises(DataError, match=r"unknown synthetic domain 'c'"):
        generate_slices("c", 1, (32, 32), 0)
    with pytest.raises(DataError, match="at least 16x16"):
        generate_slices("a", 1, (8, 32), 0)


def test_write_folder_refuses_to_mix_into_existing_data(tmp_path: Path) -> None:
    write_folder(tmp_path, "a", 2, 1, (32, 32), 0)
    assert len(list((tmp_path / "train" / "images").glob("*.png"))) == 2
    with pytest.raises(DataError, match="already holds files"):
        write_folder(tmp_path, "a", 2, 1, (32, 32), 0)
    write_folder(tmp_path, "b", 1, 1, (32, 32), 0, overwrite=True)
    assert len(list((tmp_path / "train" / "images").glob("*.png"))) == 1
