"""How raw pixel values become the network's [0, 1] input: one documented rule per dataset entry.

EM acquisitions stored in 16 bits often hold 10-14-bit data (a 12-bit detector reaches 4095, not 65535), so
dividing by the dtype's maximum would make them nearly black. The rule (dataset entry option `intensity`):

- ``auto`` (default): ``dtype`` for 8-bit datasets (the study's /255), ``observed`` for 16-bit ones;
- ``dtype``: 0 .. dtype maximum (255 or 65535);
- ``bits``: 0 .. 2**bits - 1 (e.g. ``{rule: bits, bits: 12}``); a value above it is an error naming the file;
- ``observed``: the dataset's minimum .. maximum;
- ``percentiles``: the dataset's ``percentiles: [low, high]`` (default 0.5, 99.5), values outside clipped.

The range is the dataset's, over all its images (train, test, unlabelled), never each image's own: every slice of
a dataset keeps the same contrast, and a test image is scaled like the training images. Mixed bit depths within a
dataset (an 8-bit export among 16-bit files) are an error unless the entry sets ``mixed_bit_depths: true``; each
depth then gets its own range.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from ..errors import DataError
from ..validation import StrictModel

Rule = Literal["auto", "dtype", "bits", "observed", "percentiles"]
DTYPE_MAX = {"uint8": 255, "uint16": 65535}


class IntensitySpec(StrictModel):
    """A dataset entry's intensity rule (see the module docstring)."""

    rule: Rule = "auto"
    bits: int | None = Field(None, ge=1, le=16)
    percentiles: tuple[float, float] = (0.5, 99.5)
    mixed_bit_depths: bool = False

    @model_validator(mode="after")
    def _fits(self) -> IntensitySpec:
        if (self.rule == "bits") != (self.bits is not None):
            raise ValueError("intensity rule 'bits' needs 'bits: N' (e.g. 12), and 'bits' needs rule 'bits'")
        low, high = self.percentiles
        if not 0 <= low < high <= 100:
            raise ValueError(f"intensity percentiles must satisfy 0 <= low < high <= 100, got [{low}, {high}]")
        return self

    def rule_for(self, dtype: str) -> Rule:
        if self.rule != "auto":
            return self.rule
        return "dtype" if dtype == "uint8" else "observed"


class IntensityStats:
    """Value histograms of a dataset's images per dtype: exact minimum, maximum and percentiles without keeping the
    pixels (one bincount per image)."""

    def __init__(self) -> None:
        self.histograms: dict[str, np.ndarray] = {}
        self.first_source: dict[str, str] = {}  # dtype -> the first image that had it (named in messages)
        self.max_source: dict[str, tuple[int, str]] = {}  # dtype -> (largest value, the image holding it)

    def add(self, image: np.ndarray, source: str) -> None:
        dtype = str(image.dtype)
        if dtype not in DTYPE_MAX:
            raise DataError(f"{source}: image dtype {dtype}; expected uint8 or uint16")
        counts = np.bincount(image.ravel(), minlength=DTYPE_MAX[dtype] + 1)
        if dtype in self.histograms:
            self.histograms[dtype] += counts
        else:
            self.histograms[dtype] = counts.astype(np.int64)
            self.first_source[dtype] = source
        top = int(np.flatnonzero(counts)[-1]) if image.size else 0
        if top > self.max_source.get(dtype, (-1, ""))[0]:
            self.max_source[dtype] = (top, source)

    def observed(self, dtype: str) -> tuple[int, int]:
        nonzero = np.flatnonzero(self.histograms[dtype])
        return int(nonzero[0]), int(nonzero[-1])

    def problems(self, spec: IntensitySpec) -> list[str]:
        """What makes the rule unusable on this dataset: mixed bit depths, values above the stated bit depth."""
        out = []
        if len(self.histograms) > 1 and not spec.mixed_bit_depths:
            shown = ", ".join(f"{d} (e.g. {self.first_source[d]})" for d in sorted(self.histograms))
            out.append(
                f"mixed bit depths in one dataset: {shown}; convert the files to one depth, or set "
                "`intensity: {mixed_bit_depths: true}` on the entry (each depth then gets its own range)"
            )
        if spec.rule == "bits" and spec.bits is not None:
            for top, source in self.max_source.values():
                if top > 2**spec.bits - 1:
                    out.append(f"{source}: value {top} exceeds intensity bits {spec.bits} (max {2**spec.bits - 1})")
        return out

    def value_ranges(self, spec: IntensitySpec) -> dict[str, tuple[float, float]]:
        """dtype -> (low, high): raw `low` becomes 0 and `high` 1 (values outside are clipped)."""
        return {dtype: self._range(dtype, spec) for dtype in self.histograms}

    def _range(self, dtype: str, spec: IntensitySpec) -> tuple[float, float]:
        rule = spec.rule_for(dtype)
        if rule == "dtype":
            return 0.0, float(DTYPE_MAX[dtype])
        if rule == "bits":
            assert spec.bits is not None
            return 0.0, float(2**spec.bits - 1)
        if rule == "observed":
            low, high = self.observed(dtype)
        else:
            cumulative = np.cumsum(self.histograms[dtype])
            total = cumulative[-1]
            # the first value whose cumulative count reaches p % of the pixels (p = 0: the minimum, 100: the maximum)
            low, high = (int(np.searchsorted(cumulative, max(total * p / 100.0, 1))) for p in spec.percentiles)
        return float(low), float(max(high, low + 1))  # a constant dataset: no division by zero

    def describe(self, spec: IntensitySpec) -> list[str]:
        """One line per bit depth: values seen, bits used, the rule and the range that maps to [0, 1]."""
        lines = []
        for dtype, (low, high) in sorted(self.value_ranges(spec).items()):
            seen_low, seen_high = self.observed(dtype)
            used = max(1, int(seen_high).bit_length())
            lines.append(
                f"{dtype}: values {seen_low}..{seen_high} ({used} of {8 * np.dtype(dtype).itemsize} bits used); "
                f"rule {spec.rule_for(dtype)}: {low:g}..{high:g} -> 0..1"
            )
        return lines
