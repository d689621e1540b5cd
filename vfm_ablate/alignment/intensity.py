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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..config import AlignmentSpec
from ..errors import DataError

MeanStd = tuple[Sequence[float], Sequence[float]]  # per-channel normalisation
Range = tuple[float, float] | None  # a dataset's raw value range (None: the dtype's)


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


class InputAlignment:
    """One trial's input-level method with what it was estimated from: the pixels the network sees per image, the
    raw range that maps them to [0, 1], and the normalisation. The base class is `none`: pixels, range and
    normalisation as they were."""

    def pixels(self, image: np.ndarray) -> np.ndarray:
        return image

    def value_range(self, own: Range) -> Range:
        """The raw range that maps the aligned pixels to [0, 1] (`image_to_tensor`): the dataset's own."""
        return own

    def normalisation(self, dataset: str, dtype: np.dtype, default: MeanStd, value_range: Range = None) -> MeanStd:
        """(mean, std) per channel in the [0, 1] units `image_to_tensor` produces from `value_range`."""
        return default

    def with_statistics(self, dataset: str, images: Sequence[np.ndarray]) -> InputAlignment:
        """The same alignment knowing `dataset` too (a diagnostics-only dataset, from its own images)."""
        return self


@dataclass(frozen=True)
class HistogramMatching(InputAlignment):
    """Every image's intensity CDF mapped onto a reference dataset's pooled training pixels; the matched pixels
    follow the reference's distribution, so the reference dataset's intensity range maps them to [0, 1]."""

    reference: np.ndarray  # pooled reference pixels (1 x N)
    reference_range: tuple[float, float] | None  # the reference dataset's raw value range

    def pixels(self, image: np.ndarray) -> np.ndarray:
        return match_histogram(image, self.reference)

    def value_range(self, own: Range) -> Range:
        return self.reference_range


@dataclass(frozen=True)
class ZScoring(InputAlignment):
    """Each dataset normalised with the mean / std of its own training pixels instead of ImageNet's."""

    statistics: dict[str, tuple[float, float]] = field(default_factory=dict)  # dataset -> (mean, std), raw units

    def normalisation(self, dataset: str, dtype: np.dtype, default: MeanStd, value_range: Range = None) -> MeanStd:
        if dataset not in self.statistics:
            raise DataError(f"z-scoring: no intensity statistics for dataset '{dataset}'")
        mean, std = self.statistics[dataset]
        low, high = value_range if value_range is not None else (0.0, _full_scale(np.dtype(dtype)))
        return ((mean - low) / (high - low),) * 3, (std / (high - low),) * 3

    def with_statistics(self, dataset: str, images: Sequence[np.ndarray]) -> InputAlignment:
        if dataset in self.statistics:
            return self
        stats = {**self.statistics, dataset: intensity_statistics(images, f"dataset '{dataset}'")}
        return replace(self, statistics=stats)


@dataclass(frozen=True)
class Clahe(InputAlignment):
    """Contrast-limited adaptive histogram equalisation per image; scikit-image rescales each image over its bit
    depth, so the dtype's range maps the result to [0, 1]."""

    clip_limit: float = 0.01
    kernel_size: int | None = None

    def pixels(self, image: np.ndarray) -> np.ndarray:
        return clahe(image, self.clip_limit, self.kernel_size)

    def value_range(self, own: Range) -> Range:
        return None


@dataclass(frozen=True)
class TrainingImages:
    """What an input-level method is estimated from: training images only, never a test image (the type holds
    nothing else). `images` per train / target dataset; `reference` names the histogram reference dataset."""

    images: dict[str, list[np.ndarray]]
    value_ranges: dict[str, tuple[float, float] | None]
    reference: str | None = None


def _histogram(settings: AlignmentSpec, training: TrainingImages) -> InputAlignment:
    ref = training.reference
    assert ref is not None  # TrialSpec guarantees a reference dataset for histogram matching
    pixels = reference_pixels(training.images[ref], f"alignment.reference '{ref}'")
    return HistogramMatching(reference=pixels, reference_range=training.value_ranges[ref])


def _zscore(settings: AlignmentSpec, training: TrainingImages) -> InputAlignment:
    images = training.images
    return ZScoring({name: intensity_statistics(ims, f"dataset '{name}' (z-scoring)") for name, ims in images.items()})


# alignment.input -> the estimated method (keys: config.ALIGNMENT_METHODS["input"])
INPUT_METHODS: dict[str, Callable[[AlignmentSpec, TrainingImages], InputAlignment]] = {
    "none": lambda settings, training: InputAlignment(),
    "histogram": _histogram,
    "zscore": _zscore,
    "clahe": lambda settings, training: Clahe(settings.clahe_clip_limit, settings.clahe_kernel),
}


def estimate_input_alignment(settings: AlignmentSpec, training: TrainingImages) -> InputAlignment:
    """The trial's input-level method, estimated on its training images."""
    return INPUT_METHODS[settings.input](settings, training)
