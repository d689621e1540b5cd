"""Read the on-disk dataset layouts into image/mask slices, paired right and split reproducibly.

Two stages, so that `data check` and the loader share every rule: `layouts.list_slices` lists and pairs files
without reading pixels; `images.read_slice` reads one pair, failing with the file's name.

Splits: predefined where the layout has one (Lucchi++ Train/Test, folder or
stack with test_* options); otherwise seeded:
``test = sorted(numpy.random.default_rng([split_seed, 1]).permutation(n)[:k])``
over the slices in name order, ``k`` = ``test_count`` (VNC: 3 of 20) or
``round(test_fraction * n)`` (at least 1). The split seed comes from the trial
(``TrialSpec.split_seed``, default 0); repeats must use different ones.

Pixel values: each slice carries the raw (low, high) that becomes [0, 1], from the entry's intensity rule over the
whole dataset (data/intensity.py); colour images are refused unless the entry converts them (`colour`).

Loaded datasets are cached in-process (pixels per entry, splits per split seed)
and their arrays are read-only, because many trials reuse them.

Which training slices carry labels: all of them by default; `labelled=k` (a trial's `data.labelled`) keeps the
masks of a nested seeded draw of k (`sampling.labelled_draw`) and gives the rest none; `labelled=0` is an
unlabelled target of domain adaptation. A training slice outside the draw has no mask and its mask file is never
read from disk (only the labelled ones' and the test split's are), so no such label can reach training; when this
process already holds the entry's pixels with every mask (another trial read it fully labelled), the masks are
dropped here instead.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import TypeVar

from ..errors import DataError
from .entries import DatasetEntry
from .images import Slice, read_all
from .intensity import IntensityStats
from .layouts import Listing, SliceRef, list_slices, seeded_test_indices
from .sampling import labelled_draw

__all__ = ["LoadedDataset", "Slice", "clear_cache", "load_dataset"]


@dataclass(frozen=True, eq=False)
class LoadedDataset:
    """A dataset's slices after the split. `training`: every training slice in listing order, those at `labelled`
    with their mask, the others without (never read); `unlabelled`: the entry's own unlabelled slices (diagnostics).
    """

    name: str
    training: list[Slice]
    labelled: tuple[int, ...]
    test: list[Slice]
    unlabelled: list[Slice]

    @property
    def train(self) -> list[Slice]:
        """The labelled training slices (every training slice unless a labelled draw was asked for)."""
        return [self.training[i] for i in self.labelled]

    @property
    def remainder(self) -> list[Slice]:
        """The training slices outside the labelled draw: images only."""
        keep = set(self.labelled)
        return [s for i, s in enumerate(self.training) if i not in keep]


@dataclass(frozen=True)
class _Pixels:
    labelled: list[Slice]
    test: list[Slice] | None
    unlabelled: list[Slice]
    test_count: int


_PIXELS: dict[str, _Pixels] = {}
_DATASETS: dict[tuple[str, int, tuple[str, object]], LoadedDataset] = {}
_LOCK = threading.Lock()


def _entry_key(entry: DatasetEntry) -> str:
    data = entry.model_dump(mode="json")
    if entry.path is not None:
        data["path"] = str(entry.root())
    return repr(sorted(data.items()))


def _synthetic(entry: DatasetEntry) -> _Pixels:
    from .synthetic import generate_slices

    assert entry.domain is not None
    train = generate_slices(entry.domain, entry.n_train, entry.size, entry.seed, split="train")
    test = generate_slices(entry.domain, entry.n_test, entry.size, entry.seed, split="test")
    for s in train + test:
        s.image.setflags(write=False)
        s.mask.setflags(write=False)  # type: ignore[union-attr]
    return _Pixels(labelled=train, test=test, unlabelled=[], test_count=0)


def _listing(entry: DatasetEntry) -> Listing:
    listing = list_slices(entry)
    if listing.problems:
        shown = "\n  - ".join(listing.problems[:10])
        more = f"\n  ... and {len(listing.problems) - 10} more" if len(listing.problems) > 10 else ""
        raise DataError(
            f"dataset '{entry.name}' ({entry.layout} at {entry.path}) is broken:\n  - {shown}{more}\n"
            f"(run `vfm-ablate data check {entry.path}` for a full report)"
        )
    return listing


def _read_pixels(entry: DatasetEntry) -> _Pixels:
    if entry.layout == "synthetic":
        return _synthetic(entry)
    listing = _listing(entry)
    labelled, test, unlabelled = _read_scaled(entry, [listing.labelled, listing.test or [], listing.unlabelled])
    return _Pixels(
        labelled=labelled,
        test=test if listing.test is not None else None,
        unlabelled=unlabelled,
        test_count=listing.test_count,
    )


def _read_scaled(entry: DatasetEntry, groups: list[list[SliceRef]]) -> list[list[Slice]]:
    """Read groups of slices (a ref without a mask is read without one), each scaled by the value range of the
    entry's intensity rule over all of them (every image of the dataset)."""
    read = [read_all(refs, entry.mask_rule, entry.colour) for refs in groups]
    ranges = value_ranges(entry, [s for group in read for s in group])
    return [[replace(s, value_range=ranges[str(s.image.dtype)]) for s in group] for group in read]


def value_ranges(entry: DatasetEntry, slices: list[Slice]) -> dict[str, tuple[float, float]]:
    """dtype -> the raw (low, high) that becomes [0, 1], by the entry's intensity rule over all its images."""
    stats = IntensityStats()
    for s in slices:
        stats.add(s.image, s.source)
    problems = stats.problems(entry.intensity)
    if problems:
        raise DataError(f"dataset '{entry.name}' ({entry.layout} at {entry.path}): " + "; ".join(problems))
    return stats.value_ranges(entry.intensity)


def load_dataset(
    entry: DatasetEntry, split_seed: int, *, labelled: int | float | str | None = None
) -> LoadedDataset:
    """An entry's slices split into train/test (+ unlabelled); deterministic per split_seed, cached in-process.

    `labelled` (None / 'all': every training slice): how many training slices keep their mask, a count or a
    fraction (`data.labelled`), drawn nested by the split seed; 0 for an unlabelled target. The others carry no
    mask, and their mask files are not read (unless this process already read them for a fully labelled use of
    the entry: then they are dropped here)."""
    key = _entry_key(entry)
    dataset_key = (key, split_seed, (type(labelled).__name__, labelled))  # 1 and 1.0 are different settings
    with _LOCK:
        cached = _DATASETS.get(dataset_key)
        pixels = _PIXELS.get(key)
    if cached is not None:
        return cached
    if pixels is None and labelled not in (None, "all") and entry.layout != "synthetic":
        dataset = _read_partly_labelled(entry, split_seed, labelled)
    else:
        if pixels is None:
            pixels = _read_pixels(entry)
            with _LOCK:
                pixels = _PIXELS.setdefault(key, pixels)
        train, test = _split(pixels.labelled, pixels.test, pixels.test_count, split_seed)
        keep = labelled_draw(len(train), labelled, split_seed, entry.name)
        chosen = set(keep)
        training = [s if i in chosen else replace(s, mask=None) for i, s in enumerate(train)]
        dataset = LoadedDataset(entry.name, training, tuple(keep), test, list(pixels.unlabelled))
    with _LOCK:
        return _DATASETS.setdefault(dataset_key, dataset)


T = TypeVar("T")


def _split(labelled: list[T], test: list[T] | None, test_count: int, split_seed: int) -> tuple[list[T], list[T]]:
    """(train, test): the predefined test split, or the seeded one drawn from the labelled slices."""
    if test is not None:
        return list(labelled), list(test)
    test_idx = set(seeded_test_indices(len(labelled), test_count, split_seed))
    train = [s for i, s in enumerate(labelled) if i not in test_idx]
    return train, [s for i, s in enumerate(labelled) if i in test_idx]


def _read_partly_labelled(entry: DatasetEntry, split_seed: int, labelled: int | float | str) -> LoadedDataset:
    """Read from disk with only the drawn training slices' masks (and the test split's): the others' mask files are
    never opened."""
    listing = _listing(entry)
    train_refs, test_refs = _split(listing.labelled, listing.test, listing.test_count, split_seed)
    keep = labelled_draw(len(train_refs), labelled, split_seed, entry.name)
    chosen = set(keep)
    refs = [r if i in chosen else replace(r, mask=None, mask_page=None) for i, r in enumerate(train_refs)]
    training, test, unlabelled = _read_scaled(entry, [refs, test_refs, listing.unlabelled])
    return LoadedDataset(entry.name, training, tuple(keep), test, unlabelled)


def clear_cache() -> None:
    """Forget every loaded dataset (e.g. after files on disk changed)."""
    with _LOCK:
        _PIXELS.clear()
        _DATASETS.clear()
