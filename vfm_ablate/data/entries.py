"""Named dataset entries: what a sweep file's `data.train: [vnc, ...]` refers to.

An entry holds every fact needed to read one dataset (layout, root path, the
layout's options, the mask rule). Built-ins cover the study's datasets and two
synthetic domains; users declare more in sweep files with the same schema.

Layouts and the options each one takes (anything else is an error):

- ``lucchi_pp``: ``path`` holds ``Train_In/maskNNNN.png`` + ``Train_Out/N.png`` and
  ``Test_In`` + ``Test_Out``; paired by the number in the name; the test split is
  predefined.
- ``vnc``: ``path`` holds ``stack1/raw/NN.tif`` + ``stack1/mitochondria/NN.png``
  (``image_dir`` / ``mask_dir`` override these); seeded split with
  ``test_count`` test slices (default 3, i.e. the usual 17/3).
- ``folder``: ``image_dir`` + ``mask_dir`` under ``path`` (default ``images`` and
  ``masks``), paired by ``pairing`` (stem or number). A predefined test split
  when ``test_image_dir`` + ``test_mask_dir`` are given, else a seeded split
  (``test_count`` or ``test_fraction``, default 0.2).
- ``tiff_stack``: multi-page TIFF volumes ``image_stack`` + ``mask_stack`` (paths
  under ``path``), pages paired by index; predefined test stacks
  (``test_image_stack`` + ``test_mask_stack``) or a seeded split as for folder.
- ``unlabelled``: images only, for diagnostics: every image in ``image_dir``
  (default: ``path`` itself) or the pages of ``image_stack``.
- every layout with files also takes ``colour`` (``error``, the default: a colour image is an error naming the
  file; ``luminance``: converted by 0.299 R + 0.587 G + 0.114 B) and ``intensity`` (how raw values become
  [0, 1]; see :mod:`vfm_ablate.data.intensity`).
- ``synthetic``: generated in memory by :mod:`vfm_ablate.data.synthetic`
  (``domain``, ``n_train``, ``n_test``, ``size``, ``seed``); no path. Train and test are
  independent generated streams, so the test split is fixed by ``seed``, not by the split seed.

Relative paths are resolved against the current working directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ..errors import ConfigError
from ..validation import StrictModel, suggest
from .intensity import IntensitySpec
from .masks import DEFAULT_THRESHOLD, MaskRule
from .synthetic_domains import DOMAINS

Layout = Literal["lucchi_pp", "vnc", "folder", "tiff_stack", "synthetic", "unlabelled"]

DATA_ROOT_ENV = "VFM_ABLATE_DATA_ROOT"
DEFAULT_DATA_ROOT = "data"
# VNC: the usual benchmark split is 17 training / 3 test slices
VNC_TEST_COUNT = 3
DEFAULT_TEST_FRACTION = 0.2
# synthetic domains are generated in memory for demos and tests: bounds that keep that to seconds
MIN_SYNTHETIC_SIDE, MAX_SYNTHETIC_SIDE = 16, 4096
MAX_SYNTHETIC_SLICES = 10_000

_MASK_OPTIONS = {"mask_threshold", "mask_labels"}
_IMAGE_OPTIONS = {"colour", "intensity"}  # how raw pixels are read: every layout with files
_SPLIT_OPTIONS = {"test_count", "test_fraction"}
# which optional fields each layout accepts (name and layout are always required)
LAYOUT_OPTIONS: dict[str, set[str]] = {
    "lucchi_pp": {"path"} | _MASK_OPTIONS | _IMAGE_OPTIONS,
    "vnc": {"path", "image_dir", "mask_dir", "pairing", "test_count"} | _MASK_OPTIONS | _IMAGE_OPTIONS,
    "folder": {"path", "image_dir", "mask_dir", "test_image_dir", "test_mask_dir", "pairing"}
    | _SPLIT_OPTIONS
    | _MASK_OPTIONS
    | _IMAGE_OPTIONS,
    "tiff_stack": {"path", "image_stack", "mask_stack", "test_image_stack", "test_mask_stack"}
    | _SPLIT_OPTIONS
    | _MASK_OPTIONS
    | _IMAGE_OPTIONS,
    "unlabelled": {"path", "image_dir", "image_stack"} | _IMAGE_OPTIONS,
    "synthetic": {"domain", "n_train", "n_test", "size", "seed"},
}
_REQUIRED: dict[str, set[str]] = {
    "lucchi_pp": {"path"},
    "vnc": {"path"},
    "folder": {"path"},
    "tiff_stack": {"path", "image_stack", "mask_stack"},
    "unlabelled": {"path"},
    "synthetic": {"domain"},
}


class DatasetEntry(StrictModel):
    """Every fact needed to read one dataset; see the module docstring for each layout's options."""

    name: str = Field(min_length=1)
    layout: Layout
    path: str | None = None  # dataset root (a folder); every layout but synthetic
    image_dir: str | None = None
    mask_dir: str | None = None
    test_image_dir: str | None = None
    test_mask_dir: str | None = None
    pairing: Literal["auto", "stem", "number"] = "auto"
    image_stack: str | None = None
    mask_stack: str | None = None
    test_image_stack: str | None = None
    test_mask_stack: str | None = None
    test_count: int | None = Field(None, ge=1)
    test_fraction: float | None = Field(None, gt=0, lt=1)
    mask_threshold: int = Field(DEFAULT_THRESHOLD, ge=0, le=254)  # see masks.py for the rule
    mask_labels: list[int] | None = None
    # colour raw images (channels that differ): an error naming the file, or converted by luminance on request
    colour: Literal["error", "luminance"] = "error"
    intensity: IntensitySpec = IntensitySpec()  # raw values -> [0, 1]: see intensity.py for the rules
    domain: str | None = None
    n_train: int = Field(8, ge=1, le=MAX_SYNTHETIC_SLICES)
    n_test: int = Field(4, ge=1, le=MAX_SYNTHETIC_SLICES)
    size: tuple[int, int] = (128, 128)
    seed: int = Field(0, ge=0, lt=2**32)  # numpy's SeedSequence takes non-negative seeds

    @model_validator(mode="after")
    def _options_fit_layout(self) -> DatasetEntry:
        allowed = LAYOUT_OPTIONS[self.layout]
        given = set(self.model_fields_set) - {"name", "layout"}
        wrong = sorted(given - allowed)
        if wrong:
            raise ValueError(
                f"layout '{self.layout}' does not take {', '.join(repr(w) for w in wrong)}; "
                f"its options are: {', '.join(sorted(allowed))}"
            )
        missing = sorted(k for k in _REQUIRED[self.layout] if getattr(self, k) is None)
        if missing:
            raise ValueError(f"layout '{self.layout}' needs {', '.join(repr(m) for m in missing)}")
        if self.test_count is not None and self.test_fraction is not None:
            raise ValueError("give either 'test_count' or 'test_fraction', not both")
        pairs = [("test_image_dir", "test_mask_dir"), ("test_image_stack", "test_mask_stack")]
        for a, b in pairs:
            if (getattr(self, a) is None) != (getattr(self, b) is None):
                raise ValueError(f"'{a}' and '{b}' go together (a predefined test split needs both)")
        predefined = self.test_image_dir is not None or self.test_image_stack is not None
        if predefined and (self.test_count is not None or self.test_fraction is not None):
            raise ValueError("a predefined test split (test_*_dir/stack) cannot also take test_count/test_fraction")
        if self.layout == "unlabelled" and self.image_dir is not None and self.image_stack is not None:
            raise ValueError("layout 'unlabelled' takes either 'image_dir' or 'image_stack', not both")
        if self.layout == "synthetic":
            if self.domain not in DOMAINS:
                raise ValueError(suggest(str(self.domain), set(DOMAINS), "synthetic domain"))
            if not all(MIN_SYNTHETIC_SIDE <= s <= MAX_SYNTHETIC_SIDE for s in self.size):
                raise ValueError(
                    f"synthetic 'size' must be between {MIN_SYNTHETIC_SIDE}x{MIN_SYNTHETIC_SIDE} and "
                    f"{MAX_SYNTHETIC_SIDE}x{MAX_SYNTHETIC_SIDE}, got {list(self.size)}"
                )
        return self

    @property
    def mask_rule(self) -> MaskRule:
        return MaskRule(threshold=self.mask_threshold, labels=self.mask_labels)

    def root(self) -> Path:
        """The dataset root as an absolute path (relative paths resolve against the working directory)."""
        if self.path is None:
            raise ConfigError(f"dataset '{self.name}' (layout {self.layout}) has no path")
        return Path(self.path).expanduser().resolve()


def data_root() -> Path:
    """Where the built-in entries look for data: $VFM_ABLATE_DATA_ROOT, default ./data."""
    return Path(os.environ.get(DATA_ROOT_ENV, DEFAULT_DATA_ROOT)).expanduser()


# a built-in entry reads its own folder under the data root, never another one: results are named after the entry,
# so a `lucchi_pp` that fell back to the 17/17-slice subset would put the subset's numbers under the full dataset's
# name. The subset (every 10th slice, kept for tests) is a dataset of its own name.
SUBSET_OF = {"lucchi_pp_subset": "lucchi_pp"}


def builtin_datasets() -> dict[str, DatasetEntry]:
    """The study's datasets (paths under data_root(), read at call time) and two synthetic domains."""
    root = data_root()
    entries = [
        DatasetEntry(name="lucchi_pp", layout="lucchi_pp", path=str(root / "lucchi_pp")),
        DatasetEntry(name="lucchi_pp_subset", layout="lucchi_pp", path=str(root / "lucchi_pp_subset")),
        DatasetEntry(name="vnc", layout="vnc", path=str(root / "vnc"), test_count=VNC_TEST_COUNT),
        DatasetEntry(name="vnc_stack2", layout="unlabelled", path=str(root / "vnc"), image_dir="stack2/raw"),
        DatasetEntry(name="synthetic_a", layout="synthetic", domain="a", seed=0),
        DatasetEntry(name="synthetic_b", layout="synthetic", domain="b", seed=1),
    ]
    return {e.name: e for e in entries}


def resolve_dataset(name: str, extra: dict[str, DatasetEntry] | None = None) -> DatasetEntry:
    """Look up `name` among `extra` (a sweep file's declared datasets) first, then the built-ins."""
    if extra and name in extra:
        return extra[name]
    builtins = builtin_datasets()
    if name in builtins:
        return builtins[name]
    raise ConfigError(suggest(name, set(builtins) | set(extra or {}), "dataset"))
