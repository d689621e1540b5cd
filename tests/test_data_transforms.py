"""Resize policy (patch multiples, aspect), image/mask tensors and mixed-size batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vfm_ablate.config import ResizeSpec
from vfm_ablate.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    image_to_tensor,
    mask_to_tensor,
    target_size,
)
from vfm_ablate.errors import ConfigError, DataError


def test_study_sizes() -> None:
    default = ResizeSpec()
    assert target_size(768, 1024, default, 14) == (756, 1022)  # Lucchi++ with DINOv2 / OpenCLIP
    assert target_size(1024, 1024, default, 14) == (1022, 1022)  # VNC
    assert target_size(768, 1024, default, 16) == (752, 1008)  # Lucchi++ with DINOv3
    assert target_size(1024, 1024, default, 16) == (1008, 1008)


@pytest.mark.parametrize("patch", [14, 16])
def test_longest_edge_snaps_and_keeps_aspect(patch: int) -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(20, 3000, size=2))
        target = int(rng.integers(patch, 2048))
        th, tw = target_size(h, w, ResizeSpec(target=target), patch)
        assert th % patch == 0 and tw % patch == 0 and th >= patch and tw >= patch
        assert max(th, tw) <= max(target, patch)
        assert max(th, tw) > target - patch or min(th, tw) == patch  # the long side reaches the target
        exact_h, exact_w = h * target / max(h, w), w * target / max(h, w)  # aspect-preserving, unsnapped
        if min(th, tw) > patch:  # each side within one patch of the aspect-preserving size
            assert 0 <= exact_h - th < patch and 0 <= exact_w - tw < patch


def test_fixed_and_native() -> None:
    assert target_size(768, 1024, ResizeSpec(policy="fixed", size=(448, 448)), 14) == (448, 448)
    with pytest.raises(ConfigError, match=r"multiples of the backbone's patch size 14"):
        target_size(768, 1024, ResizeSpec(policy="fixed", size=(450, 448)), 14)
    assert target_size(768, 1024, ResizeSpec(policy="native"), 14) == (756, 1022)
    assert target_size(768, 1024, ResizeSpec(policy="native"), 16) == (768, 1024)


def test_image_to_tensor_scales_replicates_and_normalises() -> None:
    img8 = np.array([[0, 255], [255, 0]], np.uint8)
    t = image_to_tensor(img8, (2, 2), IMAGENET_MEAN, IMAGENET_STD)
    assert t.shape == (3, 2, 2) and t.dtype == torch.float32
    for c in range(3):
        assert t[c, 0, 0].item() == pytest.approx(-IMAGENET_MEAN[c] / IMAGENET_STD[c], abs=1e-5)
        assert t[c, 0, 1].item() == pytest.approx((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c], abs=1e-5)
    img16 = img8.astype(np.uint16) * 257  # same picture, 16-bit
    torch.testing.assert_close(image_to_tensor(img16, (2, 2), IMAGENET_MEAN, IMAGENET_STD), t)
    plain = image_to_tensor(img8, (2, 2), (0, 0, 0), (1, 1, 1))
    assert plain.min().item() == 0.0 and plain.max().item() == 1.0


def test_image_resize_is_smooth_and_antialiased() -> None:
    stripes = np.zeros((66, 66), np.uint8)
    stripes[:, ::2] = 255  # 1-pixel stripes: a point-sampling 3x shrink keeps them black/white
    t = image_to_tensor(stripes, (22, 22), (0, 0, 0), (1, 1, 1))
    assert t.shape == (3, 22, 22)
    inner = t[:, 1:-1, 1:-1]
    assert torch.allclose(inner, torch.full_like(inner, 0.5), atol=0.15)  # antialiasing averages to grey


def test_mask_to_tensor_is_nearest_only() -> None:
    m = np.zeros((768, 1024), bool)
    m[100:300, 200:500] = True
    t = mask_to_tensor(m, (756, 1022))
    assert t.dtype == torch.int64 and t.shape == (756, 1022)
    assert set(t.unique().tolist()) == {0, 1}
    assert abs(t.float().mean().item() - m.mean()) < 0.002
    up = mask_to_tensor(np.eye(3, dtype=bool), (9, 9))
    assert torch.equal(up, torch.from_numpy(np.kron(np.eye(3), np.ones((3, 3)))).long())


def test_tensor_input_errors() -> None:
    with pytest.raises(DataError, match="uint8 or uint16"):
        image_to_tensor(np.zeros((4, 4), np.float32), (4, 4))
    with pytest.raises(DataError, match="2-D"):
        mask_to_tensor(np.zeros((2, 4, 4), bool), (4, 4))
