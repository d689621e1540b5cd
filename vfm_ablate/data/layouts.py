"""List and pair a dataset's files on disk without reading pixels, and draw the seeded test split.

Pairing is by stem or by the *number* in the name (Lucchi++ ``maskNNNN.png`` <-> ``N.png``), never by sorted
position; names that carry neither are refused. `data check` and the loader share every rule here.

Seeded test split (where the layout has no predefined one):
``test = sorted(numpy.random.default_rng([split_seed, 1]).permutation(n)[:k])`` over the slices in name order,
``k`` = ``test_count`` (VNC: 3 of 20) or ``round(test_fraction * n)`` (at least 1).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .entries import (
    DATA_ROOT_ENV,
    DEFAULT_DATA_ROOT,
    DEFAULT_TEST_FRACTION,
    SUBSET_OF,
    VNC_TEST_COUNT,
    DatasetEntry,
    builtin_datasets,
)

IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".gif"}
TEST_SPLIT_STREAM = 1  # rng stream tag of the seeded test split (validation uses another, see sampling.py)


@dataclass(frozen=True)
class SliceRef:
    """Where one slice lives on disk, before reading: a file, or a page of a multi-page TIFF."""

    image: Path
    mask: Path | None = None
    image_page: int | None = None
    mask_page: int | None = None

    @property
    def source(self) -> str:
        return str(self.image) if self.image_page is None else f"{self.image}[{self.image_page}]"

    @property
    def mask_source(self) -> str | None:
        if self.mask is None:
            return None
        return str(self.mask) if self.mask_page is None else f"{self.mask}[{self.mask_page}]"


@dataclass
class Listing:
    """A dataset's slices as listed on disk; `test` is None when the test split is seeded."""

    labelled: list[SliceRef] = field(default_factory=list)  # train (predefined) or all labelled (seeded)
    test: list[SliceRef] | None = None
    unlabelled: list[SliceRef] = field(default_factory=list)
    test_count: int = 0  # seeded split: number of test slices
    problems: list[str] = field(default_factory=list)  # each names a file; any problem means broken
    ignored: list[str] = field(default_factory=list)  # files that are not images (reported, harmless)

    @property
    def train_count(self) -> int:
        """Labelled slices left for training once the test split is taken."""
        return len(self.labelled) if self.test is not None else len(self.labelled) - self.test_count


def _natural_key(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _last_number(stem: str) -> int | None:
    found = re.findall(r"\d+", stem)
    return int(found[-1]) if found else None


def _image_files(folder: Path, ignored: list[str]) -> list[Path]:
    files = []
    for p in sorted(folder.iterdir(), key=lambda q: _natural_key(q.name)):
        if p.name.startswith(".") or p.is_dir():
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:
            files.append(p)
        else:
            ignored.append(str(p))
    return files


def _existing_dir(path: Path, what: str, problems: list[str]) -> bool:
    if not path.is_dir():
        problems.append(f"{path}: {what} folder not found")
        return False
    return True


def pair_files(
    image_dir: Path, mask_dir: Path, pairing: str, problems: list[str], ignored: list[str]
) -> list[SliceRef]:
    """Pair images with masks by stem or by the last number in the name; problems name each file."""
    ok = _existing_dir(image_dir, "image", problems) & _existing_dir(mask_dir, "mask", problems)
    if not ok:
        return []
    images = _image_files(image_dir, ignored)
    masks = _image_files(mask_dir, ignored)
    if not images:
        problems.append(f"{image_dir}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return []
    if pairing == "auto":
        common = {p.stem for p in images} & {p.stem for p in masks}
        pairing = "stem" if masks and len(common) >= math.ceil(min(len(images), len(masks)) / 2) else "number"

    def keys(files: list[Path], side: str) -> dict[object, Path]:
        out: dict[object, Path] = {}
        for p in files:
            key: object = p.stem if pairing == "stem" else _last_number(p.stem)
            if key is None:
                problems.append(
                    f"{p}: {side} name carries no number and no {'mask' if side == 'image' else 'image'} "
                    "has the same stem; cannot pair it (pairing by sorted position is refused)"
                )
                continue
            if key in out:
                problems.append(f"{p}: same pairing key {key!r} as {out[key].name}; cannot tell which {side} to use")
                continue
            out[key] = p
        return out

    img_keys, mask_keys = keys(images, "image"), keys(masks, "mask")
    what = "number" if pairing == "number" else "stem"
    refs = []
    for key, img in img_keys.items():
        if key in mask_keys:
            refs.append(SliceRef(image=img, mask=mask_keys[key]))
        else:
            problems.append(f"{img}: no mask with {what} {key!r} in {mask_dir}")
    for key, msk in mask_keys.items():
        if key not in img_keys:
            problems.append(f"{msk}: mask has no image with {what} {key!r} in {image_dir}")
    return sorted(refs, key=lambda r: _natural_key(r.image.name))


def stack_pages(path: Path) -> int:
    """Number of 2-D pages in a TIFF (a plain 2-D TIFF has one); raises DataError naming the file."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, axes = tuple(series.shape), series.axes
    except FileNotFoundError:
        raise DataError(f"{path}: stack file not found") from None
    except Exception as err:
        raise DataError(f"{path}: unreadable TIFF stack ({type(err).__name__}: {err})") from None
    spatial = 3 if axes.endswith("S") else 2
    return int(np.prod(shape[:-spatial])) if len(shape) > spatial else 1


def _stack_refs(image_stack: Path, mask_stack: Path | None, problems: list[str]) -> list[SliceRef]:
    try:
        n_img = stack_pages(image_stack)
        n_mask = stack_pages(mask_stack) if mask_stack is not None else None
    except DataError as err:
        problems.append(str(err))
        return []
    if n_mask is not None and n_mask != n_img:
        problems.append(f"{mask_stack}: mask stack has {n_mask} pages but image stack {image_stack} has {n_img}")
        return []
    return [
        SliceRef(image=image_stack, image_page=i, mask=mask_stack, mask_page=None if mask_stack is None else i)
        for i in range(n_img)
    ]


def _seeded_count(entry: DatasetEntry, n: int) -> int:
    if entry.test_count is not None:
        return entry.test_count
    if entry.layout == "vnc":
        return VNC_TEST_COUNT
    fraction = entry.test_fraction if entry.test_fraction is not None else DEFAULT_TEST_FRACTION
    return max(1, math.floor(n * fraction + 0.5))


def list_slices(entry: DatasetEntry) -> Listing:
    """List and pair an entry's files (no pixel reads); every problem found is collected, not raised."""
    out = Listing()
    if entry.layout == "synthetic":
        return out
    root = entry.root()
    if not root.exists():
        where = ""
        if entry.name in builtin_datasets():
            where = (
                f" (built-in datasets live under ${DATA_ROOT_ENV}, currently "
                f"'{os.environ.get(DATA_ROOT_ENV, DEFAULT_DATA_ROOT)}'"
            )
            subsets = [n for n, full in SUBSET_OF.items() if full == entry.name and (root.parent / n).is_dir()]
            if subsets:
                where += (
                    f"; {root.parent / subsets[0]} beside it is a subset, the dataset '{subsets[0]}': name that one "
                    "to train on the subset"
                )
            where += ")"
        out.problems.append(f"{root}: dataset '{entry.name}' folder not found{where}")
        return out
    if entry.layout == "lucchi_pp":
        out.labelled = pair_files(root / "Train_In", root / "Train_Out", "number", out.problems, out.ignored)
        out.test = pair_files(root / "Test_In", root / "Test_Out", "number", out.problems, out.ignored)
    elif entry.layout in ("vnc", "folder"):
        default_img, default_mask = (
            ("stack1/raw", "stack1/mitochondria") if entry.layout == "vnc" else ("images", "masks")
        )
        out.labelled = pair_files(
            root / (entry.image_dir or default_img),
            root / (entry.mask_dir or default_mask),
            entry.pairing,
            out.problems,
            out.ignored,
        )
        if entry.test_image_dir is not None and entry.test_mask_dir is not None:
            out.test = pair_files(
                root / entry.test_image_dir, root / entry.test_mask_dir, entry.pairing, out.problems, out.ignored
            )
    elif entry.layout == "tiff_stack":
        assert entry.image_stack is not None and entry.mask_stack is not None
        out.labelled = _stack_refs(root / entry.image_stack, root / entry.mask_stack, out.problems)
        if entry.test_image_stack is not None and entry.test_mask_stack is not None:
            out.test = _stack_refs(root / entry.test_image_stack, root / entry.test_mask_stack, out.problems)
    elif entry.layout == "unlabelled":
        if entry.image_stack is not None:
            out.unlabelled = _stack_refs(root / entry.image_stack, None, out.problems)
        else:
            folder = root / entry.image_dir if entry.image_dir else root
            if _existing_dir(folder, "image", out.problems):
                out.unlabelled = [SliceRef(image=p) for p in _image_files(folder, out.ignored)]
                if not out.unlabelled:
                    out.problems.append(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if out.test is None and out.labelled:
        n = len(out.labelled)
        out.test_count = _seeded_count(entry, n)
        if out.test_count >= n:
            out.problems.append(
                f"{root}: dataset '{entry.name}' has {n} labelled slices, too few for {out.test_count} "
                "test slices plus at least one training slice"
            )
    return out


def training_count(entry: DatasetEntry) -> int | None:
    """How many labelled training slices the entry has (after its test split), from the listing alone; None when
    the listing has problems (those are reported by whoever checks the listing)."""
    if entry.layout == "synthetic":
        return entry.n_train
    listing = list_slices(entry)
    if listing.problems:
        return None
    return len(listing.labelled) - (listing.test_count if listing.test is None else 0)


def seeded_test_indices(n: int, test_count: int, split_seed: int) -> list[int]:
    """The seeded test split: `test_count` of `n` indices, a pure function of `split_seed`."""
    rng = np.random.default_rng([split_seed, TEST_SPLIT_STREAM])
    return sorted(int(i) for i in rng.permutation(n)[:test_count])
