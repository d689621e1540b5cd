"""Turn slices into network input: size snapped to the backbone's patch grid, 3-channel, normalised.

Why patch multiples: a ViT sees an h x w image as (h/p) x (w/p) tokens; a side
that is not a multiple silently loses its last pixels. The study's policy
("longest_edge") scales the longest side to a target, keeps the aspect ratio,
and snaps *both* sides **down** to a multiple of the patch (Lucchi++ 768x1024,
patch 14, target 1022 -> 756x1022 h x w; patch 16, target 1008 -> 752x1008), so
the aspect ratio is kept to within one patch. Masks always follow with
nearest-neighbour resizing, never interpolation.

Mixed sizes in one batch (paired Lucchi++ + VNC) are never zero-padded: the
trial runs a batch as same-size groups (`trial.forward`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ResizeSpec
from ..errors import ConfigError, DataError

# ImageNet statistics: the study's normalisation for every backbone (per-backbone stats are an option)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# the study's default target is the largest patch multiple strictly below 1024: 1022 (14), 1008 (16)
DEFAULT_SIDE_LIMIT = 1024


def default_target(patch: int) -> int:
    """The study's longest-edge target for a patch size: 1022 for 14, 1008 for 16 (largest multiple < 1024)."""
    return max(patch, ((DEFAULT_SIDE_LIMIT - 1) // patch) * patch)


def _snap_down(x: float, patch: int) -> int:
    return max(patch, int(np.floor(x / patch + 1e-9)) * patch)


def target_size(h: int, w: int, resize: ResizeSpec, patch: int) -> tuple[int, int]:
    """Network input size (height, width) for an h x w image under `resize`, both sides multiples of `patch`."""
    if patch < 1:
        raise ConfigError(f"patch size must be >= 1, got {patch}")
    if h < 1 or w < 1:
        raise DataError(f"image size must be positive, got {h}x{w}")
    if resize.policy == "fixed":
        assert resize.size is not None  # ResizeSpec guarantees it
        fh, fw = resize.size
        if fh % patch or fw % patch or fh < 1 or fw < 1:
            raise ConfigError(
                f"resize.size {list(resize.size)} must be positive multiples of the backbone's patch size {patch} "
                f"(e.g. {[_snap_down(fh, patch), _snap_down(fw, patch)]})"
            )
        return int(fh), int(fw)
    if resize.policy == "native":
        return _snap_down(h, patch), _snap_down(w, patch)
    target = resize.target if resize.target is not None else default_target(patch)
    scale = target / max(h, w)
    return _snap_down(h * scale, patch), _snap_down(w * scale, patch)


def image_to_tensor(
    image: np.ndarray,
    size: tuple[int, int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    value_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Greyscale uint8/uint16 HxW -> float32 3 x h x w: raw `value_range` (low, high) scaled to [0, 1] and
    clipped (default: the dtype's range, 0..255 / 0..65535; a dataset's own comes from its intensity rule, see
    data/intensity.py), bilinear (antialiased when shrinking) resize, replicated to 3 channels, normalised."""
    a = np.asarray(image)
    if a.ndim != 2:
        raise DataError(f"image_to_tensor expects a 2-D greyscale image, got shape {a.shape}")
    if a.dtype == np.uint8:
        full = 255.0
    elif a.dtype == np.uint16:
        full = 65535.0
    else:
        raise DataError(f"image_to_tensor expects uint8 or uint16 pixels, got {a.dtype}")
    low, high = value_range if value_range is not None else (0.0, full)
    if not high > low:
        raise DataError(f"image_to_tensor: value range must have high > low, got ({low}, {high})")
    h, w = int(size[0]), int(size[1])
    x = torch.from_numpy(a.astype(np.float32))[None, None]
    if low > 0 or high < full:  # values outside the range exist: clip before resizing
        x = ((x - low) / (high - low)).clamp_(0.0, 1.0)
        low, high = 0.0, 1.0
    if (h, w) != tuple(a.shape):
        shrinking = h < a.shape[0] or w < a.shape[1]
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=shrinking)
    # resizing is linear, so scaling to [0, 1] and normalising fold into one multiply-add afterwards
    std_t = torch.tensor(list(std), dtype=torch.float32).view(3, 1, 1)
    scale = 1.0 / ((high - low) * std_t)
    bias = -(low / (high - low) + torch.tensor(list(mean), dtype=torch.float32).view(3, 1, 1)) / std_t
    return torch.addcmul(bias, x[0], scale)


def mask_to_tensor(mask: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """bool/0-1 HxW mask -> int64 h x w class indices, resized with nearest-neighbour only."""
    a = np.asarray(mask)
    if a.ndim != 2:
        raise DataError(f"mask_to_tensor expects a 2-D mask, got shape {a.shape}")
    t = torch.from_numpy(a.astype(np.uint8))
    h, w = int(size[0]), int(size[1])
    if (h, w) != tuple(a.shape):
        # nearest-exact samples pixel centres (same as PIL NEAREST); plain "nearest" shifts by half a pixel
        t = F.interpolate(t[None, None], size=(h, w), mode="nearest-exact")[0, 0]
    return t.to(torch.int64)
