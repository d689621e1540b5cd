"""Read listed slices into pixels: images kept as 8/16-bit greyscale, masks through `masks`, errors naming the file."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import DataError
from .layouts import SliceRef, stack_pages
from .masks import TIFF_SUFFIXES, MaskRule, mask_from_raw, read_mask

Colour = Literal["error", "luminance"]
LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601, what `colour: luminance` converts by


@dataclass(frozen=True, eq=False)
class Slice:
    """One 2-D section: greyscale image as read (uint8/uint16 HxW), bool HxW mask or None, and where it came from.

    `channels` is what the file held (1 grey, 3 colour, ... ; alpha not counted), `colour` whether those channels
    differed (converted by luminance); `value_range` is the raw (low, high) that becomes [0, 1], set per dataset
    by `sources.load_dataset` from the entry's intensity rule (None: the dtype's range)."""

    image: np.ndarray
    mask: np.ndarray | None
    source: str  # file path, or "stack.tif[page]"
    channels: int = 1
    colour: bool = False
    value_range: tuple[float, float] | None = None


def _to_grey(arr: np.ndarray, source: str, colour: Colour = "error") -> tuple[np.ndarray, int, bool]:
    """(2-D uint8/uint16 image, channels in the file, channels differed) from what a file held. Colour with equal
    channels is grey stored as RGB (taken as it is); differing channels are an error unless `colour: luminance`."""
    a = np.asarray(arr)
    channels, differed = 1, False
    if a.ndim == 3 and a.shape[-1] in (2, 4):  # drop alpha
        a = a[..., :-1]
    if a.ndim == 3 and a.shape[-1] in (1, 3):
        channels = int(a.shape[-1])
        if a.shape[-1] == 3 and not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
            differed = True
            if colour != "luminance":
                raise DataError(
                    f"{source}: a colour image (3 channels that differ), where greyscale EM is expected; fix the "
                    "file, or set `colour: luminance` on the dataset entry to convert it (0.299 R + 0.587 G + "
                    "0.114 B)"
                )
            weights = np.array(LUMINANCE, np.float32)
            a = np.round(a.astype(np.float32) @ weights).astype(a.dtype)
        else:
            a = a[..., 0]
    if a.ndim != 2:
        raise DataError(f"{source}: expected a 2-D greyscale image, got an array of shape {a.shape}")
    if not a.dtype.isnative:  # big-endian 16-bit PNG/TIFF: torch and comparisons need native order
        a = a.astype(a.dtype.newbyteorder("="))
    if a.dtype == bool:
        return a.astype(np.uint8) * 255, channels, differed
    if a.dtype in (np.uint8, np.uint16):
        return a, channels, differed
    if np.issubdtype(a.dtype, np.integer) and a.size and a.min() >= 0 and a.max() <= 65535:
        return a.astype(np.uint8 if a.max() <= 255 and a.dtype.itemsize == 1 else np.uint16), channels, differed
    raise DataError(
        f"{source}: image dtype {a.dtype} (range {a.min()}..{a.max()}) is not 8/16-bit greyscale; "
        "convert it to uint8 or uint16"
    )


def read_image(
    path: Path, page: int | None = None, stacks: dict[Path, np.ndarray] | None = None, colour: Colour = "error"
) -> np.ndarray:
    """Read one greyscale image (a file, or a page of a TIFF stack), kept as 8/16-bit."""
    return read_image_info(path, page, stacks, colour)[0]


def read_image_info(
    path: Path, page: int | None = None, stacks: dict[Path, np.ndarray] | None = None, colour: Colour = "error"
) -> tuple[np.ndarray, int, bool]:
    """(greyscale image, channels in the file, whether they differed): see `_to_grey`."""
    source = str(path) if page is None else f"{path}[{page}]"
    try:
        if page is not None:
            stack = stacks[path] if stacks is not None and path in stacks else _read_stack(path)
            return _to_grey(stack[page], source, colour)
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
    return _to_grey(arr, source, colour)


def native_size(ref: SliceRef) -> tuple[int, int] | None:
    """(height, width) of a listed slice from its file's header, pixels unread (None: unreadable, which reading
    reports with the file named)."""
    try:
        if ref.image_page is not None or ref.image.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(ref.image) as tif:
                shape, axes = tuple(tif.series[0].shape), tif.series[0].axes
            spatial = shape[-3:-1] if axes.endswith("S") else shape[-2:]
            return int(spatial[0]), int(spatial[1])
        from PIL import Image

        with Image.open(ref.image) as im:
            width, height = im.size
        return int(height), int(width)
    except Exception:  # reading reports it, naming the file
        return None


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
    ref: SliceRef,
    rule: MaskRule | None = None,
    stacks: dict[Path, np.ndarray] | None = None,
    colour: Colour = "error",
) -> tuple[Slice, str | None]:
    """Read one listed slice -> (Slice, mask encoding or None); DataError names the file on any problem."""
    image, channels, differed = read_image_info(ref.image, ref.image_page, stacks, colour)
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
    return Slice(image=image, mask=mask, source=ref.source, channels=channels, colour=differed), encoding


def read_stacks(refs: list[SliceRef]) -> dict[Path, np.ndarray]:
    """Read each multi-page TIFF the refs point into once (pages are then shared by every slice)."""
    paths = {r.image for r in refs if r.image_page is not None} | {
        r.mask for r in refs if r.mask_page is not None and r.mask is not None
    }
    return {p: _read_stack(p) for p in sorted(paths)}


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def read_all(refs: list[SliceRef], rule: MaskRule, colour: Colour = "error") -> list[Slice]:
    stacks = read_stacks(refs)
    with ThreadPoolExecutor(max_workers=_workers()) as pool:  # PIL/zlib decoding releases the GIL
        slices = [s for s, _ in pool.map(lambda r: read_slice(r, rule, stacks, colour), refs)]
    for s in slices:
        s.image.setflags(write=False)
        if s.mask is not None:
            s.mask.setflags(write=False)
    return slices
