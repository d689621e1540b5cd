"""One mask normalisation for every encoding found in EM label files.

Why one place: the two reference datasets carry three encodings (8-bit with
anti-aliasing, 1-bit, RGBA with constant alpha), and each naive rule silently
breaks one of them (a raw ``> 128`` empties the 1-bit masks; ``any channel > 0``
makes every RGBA pixel foreground because alpha is 255 everywhere).

The foreground rule (``MaskRule``), applied in this order:

1. **Label list** (``labels`` set, for multi-label maps such as VNC ``labels/``
   where 191 = mitochondria): a pixel is foreground when its *raw* value (grey
   level, or palette index for palette images) is in the list. No scaling.
2. Otherwise the raw values are put on a 0-255 scale **first**:

   - 1-bit images and any integer/bool array whose maximum is <= 1 (0/1 masks,
     in any dtype) are multiplied by 255;
   - integer arrays whose maximum is <= 255 are used as they are (this covers
     8-bit masks and 16-bit files that store 8-bit values);
   - other integer arrays are scaled by 255 / (the dtype's maximum), e.g.
     65535 for 16-bit;
   - float arrays with values in [0, 1] are multiplied by 255, others are used
     as they are.

   Colour masks: alpha is never a foreground signal by itself. A constant alpha
   is ignored; a varying alpha composites the colour over black
   (value * alpha / 255), so transparent pixels are background. The pixel value
   is then the brightest of the R, G, B channels (for grey-looking masks this is
   the grey level; a red-on-black palette mask still counts as foreground).
   Palette images are looked up through their palette first.

   A pixel is foreground when that 0-255 value is **> threshold** (default 127),
   so anti-aliasing values at the edge split at half intensity.

A mask whose raw data has at least two distinct values (ignoring a constant
alpha) but no foreground pixel after the rule is reported as an error: the rule
does not fit that file, and training on an empty mask would be silent garbage.

So is a file in which **regions** of more than one value (or colour) lie beside
the background (e.g. 0, 128 and 255 in large patches: a multi-label map with
membrane = 128 and mitochondria = 255; or red and green classes on black). A
mask has one foreground value; anti-aliasing leaves other values only on thin
edges, one or two pixels wide. A second value that fills regions is a label of
its own, and no threshold can know whether it is foreground. The dataset's
``mask_labels`` says which values are (the label rule above).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from ..errors import DataError
from ..validation import StrictModel

TIFF_SUFFIXES = {".tif", ".tiff"}
DEFAULT_THRESHOLD = 127  # foreground: value > 127 on the 0-255 scale, i.e. at least half intensity
# a value strictly between a grey mask's lowest and highest whose pixels have this many 4-neighbourhoods of their own
# value is a region (a label), not anti-aliasing (a thin edge: such pixels touch other values)
LABEL_REGION_PIXELS = 16


class MaskRule(StrictModel):
    """How raw mask values become foreground; see the module docstring for the full rule."""

    threshold: int = Field(DEFAULT_THRESHOLD, ge=0, le=254)  # foreground: 0-255 scaled value > threshold
    labels: list[int] | None = None  # foreground: raw value in this list (multi-label maps)


DEFAULT_RULE = MaskRule()


def _scale_to_255(values: np.ndarray) -> tuple[np.ndarray, str]:
    """Put single-channel raw values on 0-255 (float32) and name the value encoding."""
    if values.dtype == bool:
        return values.astype(np.float32) * 255.0, "0/1"
    vmax = float(values.max()) if values.size else 0.0
    uniq = np.unique(values)
    if np.issubdtype(values.dtype, np.floating):
        if vmax <= 1.0:
            return values.astype(np.float32) * 255.0, "float 0-1"
        return values.astype(np.float32), "float 0-255"
    if vmax <= 1:
        return values.astype(np.float32) * 255.0, "0/1"
    if vmax <= 255:
        desc = _describe_values(uniq, 255)
        return values.astype(np.float32), desc
    full = float(np.iinfo(values.dtype).max)
    return values.astype(np.float32) * (255.0 / full), _describe_values(uniq, int(full))


def _describe_values(uniq: np.ndarray, full: int) -> str:
    if len(uniq) == 2 and uniq[0] == 0 and uniq[1] == full:
        return f"0/{full}"
    if len(uniq) == 2 and uniq[0] == 0 and uniq[1] == 255:
        return "0/255"
    if len(uniq) <= 2:
        return "values " + "/".join(str(int(v)) for v in uniq)
    return "anti-aliased"


def _container(array: np.ndarray) -> str:
    if array.dtype == bool:
        return "1-bit"
    if np.issubdtype(array.dtype, np.floating):
        return f"{array.dtype.itemsize * 8}-bit float"
    return f"{array.dtype.itemsize * 8}-bit"


def _normalise(array: np.ndarray, rule: MaskRule) -> tuple[np.ndarray, str, bool]:
    """(foreground mask, encoding description, raw data has >= 2 distinct values)."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        varies = a.size > 0 and bool(a.min() != a.max())
        if rule.labels is not None:
            return np.isin(a, rule.labels), f"{_container(a)} label map (labels {rule.labels})", varies
        scaled, values = _scale_to_255(a)
        kind = "1-bit" if a.dtype == bool else f"{_container(a)} grey {values}"
        return scaled > rule.threshold, kind, varies
    if a.ndim == 3 and a.shape[-1] in (2, 3, 4):
        if rule.labels is not None:
            raise ValueError("label lists apply to single-channel masks (grey or palette), not colour")
        channels = a.shape[-1]
        colour = a[..., :1] if channels == 2 else a[..., :3]
        alpha = a[..., -1] if channels in (2, 4) else None
        colour_varies = bool(colour.min() != colour.max())
        scaled, values = _scale_to_255(colour)
        name = {2: "grey+alpha", 3: "RGB", 4: "RGBA"}[channels]
        alpha_desc = ""
        alpha_varies = False
        if alpha is not None:
            alpha_varies = bool(alpha.min() != alpha.max())
            if alpha_varies:
                a_scaled, _ = _scale_to_255(alpha)
                scaled = scaled * (a_scaled[..., None] / 255.0)
                alpha_desc = ", alpha composited over black"
            else:
                alpha_desc = f", constant alpha {alpha.flat[0]}"
        value = scaled.max(axis=-1)
        return value > rule.threshold, f"{name} {values}{alpha_desc}", colour_varies or alpha_varies
    raise ValueError(f"expected an HxW or HxWxC (C in 2, 3, 4) mask array, got shape {a.shape}")


def _region_codes(raw: np.ndarray) -> tuple[np.ndarray, bool] | None:
    """One integer per pixel that tells its value (grey) or colour (RGB, alpha composited where it varies) apart,
    and whether it is a colour; None for float masks."""
    a = np.asarray(raw)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not np.issubdtype(a.dtype, np.integer):
        return None
    if a.ndim == 2:
        return a.astype(np.int64), False
    if a.ndim == 3 and a.shape[-1] in (3, 4) and a.dtype == np.uint8:
        colour = a[..., :3].astype(np.int64)
        if a.shape[-1] == 4 and a[..., 3].min() != a[..., 3].max():
            colour = colour * a[..., 3:4].astype(np.int64) // 255
        return (colour[..., 0] << 16) | (colour[..., 1] << 8) | colour[..., 2], True
    return None


def label_regions(raw: np.ndarray) -> tuple[list[tuple[str, int]], str, bool]:
    """([(value, pixels inside its regions), ...], the darkest region value, whether a colour mask) when more than
    one value besides the darkest fills regions (`LABEL_REGION_PIXELS` or more pixels whose 4 neighbours all share
    their value): a label map, grey (0 / 128 / 255) or colour (one colour per class). No values for a mask: one
    foreground value beside the background, whatever thin anti-aliased edges of other values it has."""
    found = _region_codes(raw)
    if found is None:
        return [], "", False
    codes, colour = found
    if codes.ndim != 2 or min(codes.shape) < 3:
        return [], "", colour
    inner = codes[1:-1, 1:-1]
    inside = (inner == codes[:-2, 1:-1]) & (inner == codes[2:, 1:-1])
    inside &= (inner == codes[1:-1, :-2]) & (inner == codes[1:-1, 2:])
    values, counts = np.unique(inner[inside], return_counts=True)
    regions = [(int(v), int(n)) for v, n in zip(values, counts) if n >= LABEL_REGION_PIXELS]
    if len(regions) < 3:
        return [], "", colour

    def brightness(code: int) -> int:
        return (code >> 16 & 255) + (code >> 8 & 255) + (code & 255) if colour else code

    def name(code: int) -> str:
        return str((code >> 16 & 255, code >> 8 & 255, code & 255)) if colour else str(code)

    darkest = min(regions, key=lambda vn: brightness(vn[0]))
    others = sorted((vn for vn in regions if vn != darkest), key=lambda vn: -vn[1])
    return [(name(v), n) for v, n in others], name(darkest[0]), colour


def normalise_mask(array: np.ndarray, rule: MaskRule | None = None) -> np.ndarray:
    """Raw mask array (HxW grey/bool, or HxWxC grey+alpha/RGB/RGBA) -> bool HxW foreground."""
    return _normalise(array, rule or DEFAULT_RULE)[0]


def describe_mask(array: np.ndarray, rule: MaskRule | None = None) -> str:
    """The encoding name `read_mask` reports for an in-memory array (e.g. a TIFF stack page)."""
    return _normalise(array, rule or DEFAULT_RULE)[1]


def _read_raw(path: Path, rule: MaskRule) -> tuple[np.ndarray, str | None]:
    """Raw pixel array as stored, plus a fixed encoding name for PIL modes that need one."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        return tifffile.imread(path), None
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        mode = im.mode
        if mode == "1":
            return np.asarray(im, dtype=bool), "1-bit"
        if mode == "P":
            if rule.labels is not None:
                return np.asarray(im), None
            rgba = im.convert("RGBA" if "transparency" in im.info else "RGB")
            return np.asarray(rgba), "palette"
        if mode in ("PA", "LA", "La"):
            return np.asarray(im.convert("LA")), None
        if mode in ("RGBa", "CMYK", "YCbCr", "LAB", "HSV"):
            return np.asarray(im.convert("RGB")), None
        return np.asarray(im), None


def mask_from_raw(
    raw: np.ndarray, source: str, rule: MaskRule | None = None, fixed_name: str | None = None
) -> tuple[np.ndarray, str]:
    """Normalise a raw mask array read from `source` -> (bool HxW, encoding), with the emptiness check.

    Raises DataError naming `source` when the array is not a mask, or when the raw data is not
    constant but nothing passes the rule (the rule does not fit this file).
    """
    rule = rule or DEFAULT_RULE
    try:
        mask, encoding, varies = _normalise(raw, rule)
    except ValueError as err:
        raise DataError(f"{source}: {err}") from None
    if fixed_name == "palette":
        encoding = "palette " + encoding.split(" ", 1)[1]
    elif fixed_name is not None:
        encoding = fixed_name
    if rule.labels is None:
        regions, darkest, colour = label_regions(raw)
        if regions:
            values = ", ".join(f"{v} ({n:,} pixels inside regions)" for v, n in regions[:6])
            fix = (
                "save it with one channel (grey or a palette PNG) and name the foreground values with the dataset's "
                "mask_labels"
                if colour
                else f"name the foreground values with the dataset's mask_labels, e.g. mask_labels: [{regions[0][0]}]"
            )
            raise DataError(
                f"{source}: looks like a label map, not a mask: regions of {len(regions)} values ({values}) beside "
                f"the background {darkest}, where a mask has one (anti-aliasing leaves only thin edges of other "
                f"values); read as a mask, a threshold would decide on its own which of them are foreground: {fix}"
            )
    if varies and not mask.any():
        shown = np.unique(raw)[:8].tolist()
        how = f"raw value in {rule.labels}" if rule.labels is not None else f"0-255 scaled value > {rule.threshold}"
        raise DataError(
            f"{source}: mask is empty after normalisation ({encoding}; foreground = {how}) although the raw "
            f"file is not (values {shown}); set the dataset's mask_threshold or mask_labels to fit it"
        )
    return mask, encoding


def read_mask(path: str | Path, rule: MaskRule | None = None) -> tuple[np.ndarray, str]:
    """Read one mask file (PNG/TIFF/...) -> (bool HxW foreground, encoding name).

    Raises DataError naming the file when it is unreadable/truncated, not a 2-D
    mask, or empty after normalisation although its raw data is not constant.
    """
    p = Path(path)
    rule = rule or DEFAULT_RULE
    try:
        raw, fixed_name = _read_raw(p, rule)
    except FileNotFoundError:
        raise DataError(f"{p}: mask file not found") from None
    except Exception as err:  # PIL/tifffile raise many types for corrupt files
        raise DataError(f"{p}: unreadable or truncated mask file ({type(err).__name__}: {err})") from None
    return mask_from_raw(raw, str(p), rule, fixed_name)
