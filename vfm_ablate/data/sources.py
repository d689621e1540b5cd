"""Read the on-disk dataset layouts into image/mask slices, paired right and split reproducibly.

Two stages, so that `data check` and the loader share every rule:

1. :func:`list_slices` lists and pairs files without reading pixels. Pairing is
   by stem or by the *number* in the name (Lucchi++ ``maskNNNN.png`` <->
   ``N.png``), never by sorted position; names that carry neither are refused.
2. :func:`read_slice` reads one pair (images kept as 8/16-bit greyscale, masks
   through :mod:`vfm_ablate.data.masks`), failing with the file's name.

Splits: predefined where the layout has one (Lucchi++ Train/Test, folder or
stack with test_* options); otherwise seeded:
``test = sorted(numpy.random.default_rng([split_seed, 1]).permutation(n)[:k])``
over the slices in name order, ``k`` = ``test_count`` (VNC: 3 of 20) or
``round(test_fraction * n)`` (at least 1). The split seed comes from the trial
(``TrialSpec.split_seed``, default 0); repeats must use different ones.

Loaded datasets are cached in-process (pixels per entry, splits per split seed)
and their arrays are read-only, because many trials reuse them.
"""

from __future__ import annotations

import math
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .entries import DATA_ROOT_ENV, DEFAULT_DATA_ROOT, DEFAULT_TEST_FRACTION, VNC_TEST_COUNT, DatasetEntry
from .masks import TIFF_SUFFIXES, MaskRule, mask_from_raw, read_mask

IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".gif"}
TEST_SPLIT_STREAM = 1  # rng stream tag of the seeded test split (validation uses another, see sampling.py)


@dataclass(frozen=True, eq=False)
class Slice:
    """One 2-D section: greyscale image as read (uint8/uint16 HxW), bool HxW mask or None, and where it came from."""

    image: np.ndarray
    mask: np.ndarray | None
    source: str  # file path, or "stack.tif[page]"


@dataclass(frozen=True, eq=False)
class LoadedDataset:
    """A dataset's slices after the split; `unlabelled` is for diagnostics only."""

    name: str
    train: list[Slice]
    test: list[Slice]
    unlabelled: list[Slice]


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


# ---------------------------------------------------------------- listing and pairing


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
        out.problems.append(
            f"{root}: dataset '{entry.name}' folder not found (built-in datasets live under "
            f"${DATA_ROOT_ENV}, currently '{os.environ.get(DATA_ROOT_ENV, DEFAULT_DATA_ROOT)}')"
        )
        return out
    if entry.layout == "lucchi_pp":
        out.labelled = pair_files(root / "Train_In", root / "Train_Out", "number", out.problems, out.ignored)
        out.test = pair_files(root / "Test_In", root / "Test_Out", "number", out.problems, out.ignored)
    elif entry.layout in ("vnc", "folder"):
        default_img, default_mask = ("stack1/raw", "stack1/mitochondria") if entry.layout == "vnc" else ("images", "masks")
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


def seeded_test_indices(n: int, test_count: int, split_seed: int) -> list[int]:
    """The seeded test split: `test_count` of `n` indices, a pure function of `split_seed`."""
    rng = np.random.default_rng([split_seed, TEST_SPLIT_STREAM])
    return sorted(int(i) for i in rng.permutation(n)[:test_count])


# ---------------------------------------------------------------- reading pixels


def _to_grey(arr: np.ndarray, source: str) -> np.ndarray:
    """A 2-D uint8/uint16 image from what a file held; colour with equal channels is accepted as grey."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] in (2, 4):  # drop alpha
        a = a[..., :-1]
    if a.ndim == 3 and a.shape[-1] in (1, 3):
        if a.shape[-1] == 3 and not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
            weights = np.array([0.299, 0.587, 0.114], np.float32)
            a = np.round(a.astype(np.float32) @ weights).astype(a.dtype)
        else:
            a = a[..., 0]
    if a.ndim != 2:
        raise DataError(f"{source}: expected a 2-D greyscale image, got an array of shape {a.shape}")
    if not a.dtype.isnative:  # big-endian 16-bit PNG/TIFF: torch and comparisons need native order
        a = a.astype(a.dtype.newbyteorder("="))
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if a.dtype in (np.uint8, np.uint16):
        return a
    if np.issubdtype(a.dtype, np.integer) and a.size and a.min() >= 0 and a.max() <= 65535:
        return a.astype(np.uint8 if a.max() <= 255 and a.dtype.itemsize == 1 else np.uint16)
    raise DataError(
        f"{source}: image dtype {a.dtype} (range {a.min()}..{a.max()}) is not 8/16-bit greyscale; "
        "convert it to uint8 or uint16"
    )


def read_image(path: Path, page: int | None = None, stacks: dict[Path, np.ndarray] | None = None) -> np.ndarray:
    """Read one greyscale image (a file, or a page of a TIFF stack), kept as 8/16-bit."""
    source = str(path) if page is None else f"{path}[{page}]"
    try:
        if page is not None:
            stack = stacks[path] if stacks is not None and path in stacks else _read_stack(path)
            return _to_grey(stack[page], source)
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            arr = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGB")
                arr = np.asarray(im)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{source}: image file not found") from None
    except Exception as err:
        raise DataError(f"{source}: unreadable or truncated image file ({type(err).__name__}: {err})") from None
    if arr.ndim == 3 and arr.shape[-1] not in (1, 2, 3, 4):
        raise DataError(
            f"{source}: holds {arr.shape[0]} pages; a multi-page stack needs layout 'tiff_stack' or 'unlabelled' "
            "with image_stack"
        )
    return _to_grey(arr, source)


def _read_stack(path: Path) -> np.ndarray:
    """Whole TIFF stack as (pages, H, W[, S])."""
    import tifffile

    try:
        arr = tifffile.imread(path)
    except FileNotFoundError:
        raise DataError(f"{path}: stack file not found") from None
    except Exception as err:
        raise DataError(f"{path}: unreadable TIFF stack ({type(err).__name__}: {err})") from None
    pages = stack_pages(path)
    return arr.reshape((pages,) + _page_shape(arr, pages))


def _page_shape(arr: np.ndarray, pages: int) -> tuple[int, ...]:
    per_page = arr.size // max(pages, 1)
    # trailing dims whose product is one page's size: (H, W) or (H, W, S)
    for k in (2, 3):
        if int(np.prod(arr.shape[-k:])) == per_page:
            return tuple(arr.shape[-k:])
    raise DataError(f"cannot split an array of shape {arr.shape} into {pages} pages")


def read_slice(
    ref: SliceRef, rule: MaskRule | None = None, stacks: dict[Path, np.ndarray] | None = None
) -> tuple[Slice, str | None]:
    """Read one listed slice -> (Slice, mask encoding or None); DataError names the file on any problem."""
    image = read_image(ref.image, ref.image_page, stacks)
    mask = None
    encoding = None
    if ref.mask is not None:
        if ref.mask_page is not None:
            stack = stacks[ref.mask] if stacks is not None and ref.mask in stacks else _read_stack(ref.mask)
            mask, encoding = mask_from_raw(stack[ref.mask_page], str(ref.mask_source), rule)
        else:
            mask, encoding = read_mask(ref.mask, rule)
        if mask.shape != image.shape:
            raise DataError(
                f"{ref.mask_source}: mask is {mask.shape[0]}x{mask.shape[1]} but its image {ref.source} is "
                f"{image.shape[0]}x{image.shape[1]} (height x width)"
            )
    return Slice(image=image, mask=mask, source=ref.source), encoding


def read_stacks(refs: list[SliceRef]) -> dict[Path, np.ndarray]:
    """Read each multi-page TIFF the refs point into once (pages are then shared by every slice)."""
    paths = {r.image for r in refs if r.image_page is not None} | {
        r.mask for r in refs if r.mask_page is not None and r.mask is not None
    }
    return {p: _read_stack(p) for p in sorted(paths)}


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _read_all(refs: list[SliceRef], rule: MaskRule) -> list[Slice]:
    stacks = read_stacks(refs)
    with ThreadPoolExecutor(max_workers=_workers()) as pool:  # PIL/zlib decoding releases the GIL
        slices = [s for s, _ in pool.map(lambda r: read_slice(r, rule, stacks), refs)]
    for s in slices:
        s.image.setflags(write=False)
        if s.mask is not None:
            s.mask.setflags(write=False)
    return slices


# ---------------------------------------------------------------- loading with a cache


@dataclass(frozen=True)
class _Pixels:
    labelled: list[Slice]
    test: list[Slice] | None
    unlabelled: list[Slice]
    test_count: int


_PIXELS: dict[str, _Pixels] = {}
_DATASETS: dict[tuple[str, int], LoadedDataset] = {}
_LOCK = threading.Lock()


def _entry_key(entry: DatasetEntry) -> str:
    data = entry.model_dump(mode="json")
    if entry.path is not None:
        data["path"] = str(entry.root())
    return repr(sorted(data.items()))


def _read_pixels(entry: DatasetEntry) -> _Pixels:
    if entry.layout == "synthetic":
        from .synthetic import generate_slices

        assert entry.domain is not None
        train = generate_slices(entry.domain, entry.n_train, entry.size, entry.seed, split="train")
        test = generate_slices(entry.domain, entry.n_test, entry.size, entry.seed, split="test")
        for s in train + test:
            s.image.setflags(write=False)
            s.mask.setflags(write=False)  # type: ignore[union-attr]
        return _Pixels(labelled=train, test=test, unlabelled=[], test_count=0)
    listing = list_slices(entry)
    if listing.problems:
        shown = "\n  - ".join(listing.problems[:10])
        more = f"\n  ... and {len(listing.problems) - 10} more" if len(listing.problems) > 10 else ""
        raise DataError(
            f"dataset '{entry.name}' ({entry.layout} at {entry.path}) is broken:\n  - {shown}{more}\n"
            f"(run `vfm-ablate data check {entry.path}` for a full report)"
        )
    rule = entry.mask_rule
    labelled = _read_all(listing.labelled, rule)
    test = _read_all(listing.test, rule) if listing.test is not None else None
    unlabelled = _read_all(listing.unlabelled, rule)
    return _Pixels(labelled=labelled, test=test, unlabelled=unlabelled, test_count=listing.test_count)


def load_dataset(entry: DatasetEntry, split_seed: int) -> LoadedDataset:
    """An entry's slices split into train/test (+ unlabelled); deterministic per split_seed, cached in-process."""
    key = _entry_key(entry)
    with _LOCK:
        cached = _DATASETS.get((key, split_seed))
        pixels = _PIXELS.get(key)
    if cached is not None:
        return cached
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
        return _DATASETS.setdefault((key, split_seed), dataset)


def clear_cache() -> None:
    """Forget every loaded dataset (e.g. after files on disk changed)."""
    with _LOCK:
        _PIXELS.clear()
        _DATASETS.clear()
