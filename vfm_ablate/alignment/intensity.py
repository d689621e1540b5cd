"""Input-level alignment on the raw greyscale pixels, before resize and normalisation (so the network input, and
with it the frozen-feature cache key, changes with the method).

- histogram matching (`match_histogram`): every image's intensity CDF mapped onto a reference dataset's, pooled
  over its training images (scikit-image `match_histograms`);
- per-dataset z-scoring (`intensity_statistics`): each dataset normalised with the mean / std of its own
  training pixels instead of ImageNet's statistics;
- CLAHE (`clahe`): contrast-limited adaptive histogram equalisation (scikit-image `equalize_adapthist`).

Images stay 8/16-bit: the matched / equalised values are rounded back to the bit depth the rest of the pipeline
reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import DataError


def _full_scale(dtype: np.dtype) -> float:
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    raise DataError(f"input alignment expects uint8 or uint16 images, got {dtype}")


def reference_pixels(images: Sequence[np.ndarray], what: str) -> np.ndarray:
    """Every pixel of a reference dataset's images as one 1 x N array: the distribution histograms match to."""
    if not images:
        raise DataError(f"{what}: no images to take a reference intensity distribution from")
    dtypes = {im.dtype for im in images}
    if len(dtypes) != 1:
        raise DataError(f"{what}: reference images mix bit depths {sorted(str(d) for d in dtypes)}")
    _full_scale(images[0].dtype)
    return np.concatenate([np.asarray(im).reshape(-1) for im in images])[None, :]


def match_histogram(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`image` with its cumulative histogram matched to `reference`'s (any shape), in the reference's bit depth."""
    from skimage.exposure import match_histograms

    matched = match_histograms(np.asarray(image), reference.reshape(1, -1))
    top = _full_scale(reference.dtype)
    return np.clip(np.rint(matched), 0, top).astype(reference.dtype)


def intensity_statistics(images: Sequence[np.ndarray], what: str) -> tuple[float, float]:
    """Mean and standard deviation of every pixel of `images` (raw units), for per-dataset z-scoring."""
    if not images:
        raise DataError(f"{what}: no images to estimate intensity statistics from")
    total = sum(float(np.asarray(im, dtype=np.float64).sum()) for im in images)
    count = sum(im.size for im in images)
    mean = total / count
    var = sum(float(((np.asarray(im, dtype=np.float64) - mean) ** 2).sum()) for im in images) / count
    if var <= 0:
        raise DataError(f"{what}: every pixel has the same value; z-scoring needs intensity variation")
    return mean, float(np.sqrt(var))


def clahe(image: np.ndarray, clip_limit: float, kernel_size: int | None) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of one image, back in its own bit depth."""
    from skimage.exposure import equalize_adapthist

    a = np.asarray(image)
    top = _full_scale(a.dtype)
    out = equalize_adapthist(a, kernel_size=kernel_size, clip_limit=clip_limit)
    return np.clip(np.rint(out * top), 0, top).astype(a.dtype)


@dataclass(frozen=True)
class InputAlignment:
    """One trial's input-level method with what it was estimated from: the pixels the network sees per image, and
    the normalisation that replaces ImageNet's (z-scoring)."""

    method: str = "none"  # none | histogram | zscore | clahe
    reference: np.ndarray | None = None  # histogram: pooled reference pixels (1 x N)
    reference_range: tuple[float, float] | None = None  # histogram: the reference dataset's raw value range
    statistics: dict[str, tuple[float, float]] = field(default_factory=dict)  # zscore: dataset -> (mean, std) raw
    clip_limit: float = 0.01
    kernel_size: int | None = None

    def pixels(self, image: np.ndarray) -> np.ndarray:
        """The image after the method (histogram / CLAHE); z-scoring and none leave the pixels as they are."""
        if self.method == "histogram":
            assert self.reference is not None
            return match_histogram(image, self.reference)
        if self.method == "clahe":
            return clahe(image, self.clip_limit, self.kernel_size)
        return image

    def value_range(self, own: tuple[float, float] | None) -> tuple[float, float] | None:
        """The raw range that maps the aligned pixels to [0, 1] (`image_to_tensor`): matched pixels follow the
        reference dataset's distribution, so its intensity rule's range; CLAHE stretches each image over its bit
        depth (scikit-image rescales per image), so the dtype's range; z-scoring and none keep the dataset's own."""
        if self.method == "histogram":
            return self.reference_range
        if self.method == "clahe":
            return None
        return own

    def normalisation(
        self,
        dataset: str,
        dtype: np.dtype,
        default: tuple[Sequence[float], Sequence[float]],
        value_range: tuple[float, float] | None = None,
    ) -> tuple[Sequence[float], Sequence[float]]:
        """(mean, std) per channel in the [0, 1] units `image_to_tensor` produces from `value_range` (default the
        dtype's): the dataset's own under z-scoring."""
        if self.method != "zscore":
            return default
        if dataset not in self.statistics:
            raise DataError(f"z-scoring: no intensity statistics for dataset '{dataset}'")
        mean, std = self.statistics[dataset]
        low, high = value_range if value_range is not None else (0.0, _full_scale(np.dtype(dtype)))
        return ((mean - low) / (high - low),) * 3, (std / (high - low),) * 3

    def with_statistics(self, dataset: str, images: Sequence[np.ndarray]) -> InputAlignment:
        """The same alignment knowing `dataset`'s statistics too (a diagnostics-only dataset: its own images)."""
        if self.method != "zscore" or dataset in self.statistics:
            return self
        stats = {**self.statistics, dataset: intensity_statistics(images, f"dataset '{dataset}'")}
        return replace(self, statistics=stats)
