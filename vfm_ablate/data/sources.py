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

An unlabelled target of domain adaptation is loaded with ``train_masks=False``: its training slices come without
masks, which are then never read from disk (only the test split's masks are), so no target label can reach
training.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

from ..errors import DataError
from .entries import DatasetEntry
from .images import Slice, read_all
from .intensity import IntensityStats
from .layouts import Listing, list_slices, seeded_test_indices

__all__ = ["LoadedDataset", "Slice", "clear_cache", "load_dataset"]


@dataclass(frozen=True, eq=False)
class LoadedDataset:
    """A dataset's slices after the split; `unlabelled` is for diagnostics only."""

    name: str
    train: list[Slice]
    test: list[Slice]
    unlabelled: list[Slice]


@dataclass(frozen=True)
class _Pixels:
    labelled: list[Slice]
    test: list[Slice] | None
    unlabelled: list[Slice]
    test_count: int


_PIXELS: dict[str, _Pixels] = {}
_DATASETS: dict[tuple[str, int, bool], LoadedDataset] = {}
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
    rule = entry.mask_rule
    labelled = read_all(listing.labelled, rule, entry.colour)
    test = read_all(listing.test, rule, entry.colour) if listing.test is not None else None
    unlabelled = read_all(listing.unlabelled, rule, entry.colour)
    ranges = value_ranges(entry, [*labelled, *(test or []), *unlabelled])

    def scaled(slices: list[Slice]) -> list[Slice]:
        return [replace(s, value_range=ranges[str(s.image.dtype)]) for s in slices]

    return _Pixels(
        labelled=scaled(labelled),
        test=scaled(test) if test is not None else None,
        unlabelled=scaled(unlabelled),
        test_count=listing.test_count,
    )


def value_ranges(entry: DatasetEntry, slices: list[Slice]) -> dict[str, tuple[float, float]]:
    """dtype -> the raw (low, high) that becomes [0, 1], by the entry's intensity rule over all its images."""
    stats = IntensityStats()
    for s in slices:
        stats.add(s.image, s.source)
    problems = stats.problems(entry.intensity)
    if problems:
        raise DataError(f"dataset '{entry.name}' ({entry.layout} at {entry.path}): " + "; ".join(problems))
    return stats.value_ranges(entry.intensity)


def load_dataset(entry: DatasetEntry, split_seed: int, *, train_masks: bool = True) -> LoadedDataset:
    """An entry's slices split into train/test (+ unlabelled); deterministic per split_seed, cached in-process.

    `train_masks=False` (an unlabelled target): the same split, but the training slices carry no mask and their
    mask files are not read (unless this process already read them for a labelled use of the entry: then they are
    dropped here)."""
    key = _entry_key(entry)
    with _LOCK:
        cached = _DATASETS.get((key, split_seed, train_masks))
        pixels = _PIXELS.get(key)
    if cached is not None:
        return cached
    if not train_masks:
        dataset = _without_train_masks(entry, split_seed, pixels)
        with _LOCK:
            return _DATASETS.setdefault((key, split_seed, False), dataset)
    if pixels is None:
        pixels = _read_pixels(entry)
        with _LOCK:
            pixels = _PIXELS.setdefault(key, pixels)
    if pixels.test is not None:
        train, test = list(pixels.labelled), list(pixels.test)
    else:
        test_idx = set(seeded_test_indices(len(pixels.labelled), pixels.test_count, split_seed))
        train = [s for i, s in enumerate(pixels.labelled) if i not in test_idx]
        test = [s for i, s in enumerate(pixels.labelled) if i in test_idx]
    dataset = LoadedDataset(name=entry.name, train=train, test=test, unlabelled=list(pixels.unlabelled))
    with _LOCK:
        return _DATASETS.setdefault((key, split_seed, True), dataset)


def _without_train_masks(entry: DatasetEntry, split_seed: int, pixels: _Pixels | None) -> LoadedDataset:
    if pixels is None and entry.layout != "synthetic":
        listing = _listing(entry)
        rule = entry.mask_rule
        if listing.test is not None:
            train_refs, test_refs = listing.labelled, listing.test
        else:
            test_idx = set(seeded_test_indices(len(listing.labelled), listing.test_count, split_seed))
            train_refs = [r for i, r in enumerate(listing.labelled) if i not in test_idx]
            test_refs = [r for i, r in enumerate(listing.labelled) if i in test_idx]
        train = read_all([replace(r, mask=None, mask_page=None) for r in train_refs], rule, entry.colour)
        test = read_all(test_refs, rule, entry.colour)
        unlabelled = read_all(listing.unlabelled, rule, entry.colour)
        # the intensity rule over the same images as a labelled load: the dataset maps to [0, 1] the same either way
        ranges = value_ranges(entry, [*train, *test, *unlabelled])
        train, test, unlabelled = (
            [replace(s, value_range=ranges[str(s.image.dtype)]) for s in part] for part in (train, test, unlabelled)
        )
        return LoadedDataset(entry.name, train, test, unlabelled)
    labelled = load_dataset(entry, split_seed)  # already in memory (or generated): drop the training masks
    train = [replace(s, mask=None) for s in labelled.train]  # (keeping its value range, channels, colour)
    return LoadedDataset(entry.name, train, list(labelled.test), list(labelled.unlabelled))


def clear_cache() -> None:
    """Forget every loaded dataset (e.g. after files on disk changed)."""
    with _LOCK:
        _PIXELS.clear()
        _DATASETS.clear()
