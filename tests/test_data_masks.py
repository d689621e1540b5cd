"""Mask normalisation: every encoding found in EM label files gives the same foreground."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from vfm_ablate.data.masks import MaskRule, normalise_mask, read_mask
from vfm_ablate.errors import DataError


def _truth() -> np.ndarray:
    m = np.zeros((20, 24), bool)
    m[4:12, 6:18] = True
    return m


def _antialiased(truth: np.ndarray) -> np.ndarray:
    """0/255 with edge values on both sides of 127, as drawing tools leave them."""
    a = truth.astype(np.uint8) * 255
    a[3, 6:18] = 40  # outside pixels, faint
    a[4, 6:18] = 200  # inside pixels, not full
    a[12, 6:18] = 127  # exactly the threshold: background
    return a


def _save(path: Path, img: Image.Image) -> Path:
    img.save(path)
    return path


@pytest.mark.parametrize(
    "kind",
    [
        "8bit_0_255",
        "8bit_antialiased",
        "1bit",
        "8bit_0_1",
        "rgba_const_alpha",
        "rgb",
        "palette",
        "16bit",
        "16bit_0_1",
        "16bit_8bit_values",
        "tiff_bool",
        "tiff_0_255",
    ],
)
def test_every_encoding_gives_the_same_foreground(tmp_path: Path, kind: str) -> None:
    truth = _truth()
    u8 = truth.astype(np.uint8)
    if kind == "8bit_0_255":
        p = _save(tmp_path / "m.png", Image.fromarray(u8 * 255))
    elif kind == "8bit_antialiased":
        p = _save(tmp_path / "m.png", Image.fromarray(_antialiased(truth)))
    elif kind == "1bit":
        p = _save(tmp_path / "m.png", Image.fromarray(u8 * 255).convert("1"))
        assert Image.open(p).mode == "1"
    elif kind == "8bit_0_1":
        p = _save(tmp_path / "m.png", Image.fromarray(u8))
    elif kind == "rgba_const_alpha":
        rgba = np.stack([u8 * 255] * 3 + [np.full_like(u8, 255)], -1)
        p = _save(tmp_path / "m.png", Image.fromarray(rgba, "RGBA"))
    elif kind == "rgb":
        p = _save(tmp_path / "m.png", Image.fromarray(np.stack([u8 * 255] * 3, -1), "RGB"))
    elif kind == "palette":
        im = Image.fromarray(u8, "P")
        im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 1 = pure red
        p = _save(tmp_path / "m.png", im)
        assert Image.open(p).mode == "P"
    elif kind == "16bit":
        p = _save(tmp_path / "m.png", Image.fromarray(truth.astype(np.uint16) * 65535))
    elif kind == "16bit_0_1":
        p = tmp_path / "m.tif"
        tifffile.imwrite(p, truth.astype(np.uint16))
    elif kind == "16bit_8bit_values":
        p = tmp_path / "m.tif"
        tifffile.imwrite(p, truth.astype(np.uint16) * 255)
    elif kind == "tiff_bool":
        p = tmp_path / "m.tif"
        tifffile.imwrite(p, truth)
    else:
        p = tmp_path / "m.tif"
        tifffile.imwrite(p, u8 * 255)
    mask, encoding = read_mask(p)
    assert mask.dtype == bool and mask.shape == truth.shape
    np.testing.assert_array_equal(mask, truth)
    assert encoding


def test_encoding_names(tmp_path: Path) -> None:
    truth = _truth().astype(np.uint8)
    names = {}
    for kind, img in {
        "1bit": Image.fromarray(truth * 255).convert("1"),
        "rgba": Image.fromarray(np.stack([truth * 255] * 3 + [np.full_like(truth, 255)], -1), "RGBA"),
        "aa": Image.fromarray(_antialiased(truth.astype(bool))),
        "zero_one": Image.fromarray(truth),
    }.items():
        img.save(tmp_path / f"{kind}.png")
        names[kind] = read_mask(tmp_path / f"{kind}.png")[1]
    assert names["1bit"] == "1-bit"
    assert names["rgba"].startswith("RGBA") and "constant alpha 255" in names["rgba"]
    assert names["aa"] == "8-bit grey anti-aliased"
    assert names["zero_one"] == "8-bit grey 0/1"


def test_rgba_with_constant_alpha_is_not_all_foreground() -> None:
    """The Lucchi++ Test_Out pitfall: 'any channel > 0' would count alpha=255 as foreground everywhere."""
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[2:4, 2:4, :3] = 255
    mask = normalise_mask(rgba)
    assert mask.sum() == 4


def test_varying_alpha_composites_over_black() -> None:
    rgba = np.full((6, 6, 4), 255, np.uint8)
    rgba[..., 3] = 0
    rgba[1:3, 1:3, 3] = 255  # only these are opaque white
    assert normalise_mask(rgba).sum() == 4


def test_zero_one_is_scaled_before_threshold() -> None:
    """The VNC 1-bit pitfall: a raw threshold of 128 on 0/1 values empties the mask."""
    a = np.zeros((8, 8), np.uint8)
    a[2:5, 2:5] = 1
    assert normalise_mask(a).sum() == 9
    assert normalise_mask(a.astype(bool)).sum() == 9


def test_label_list_selects_values_of_a_multilabel_map(tmp_path: Path) -> None:
    labels = np.zeros((10, 10), np.uint8)
    labels[0:3] = 255  # membranes
    labels[5:7] = 191  # mitochondria (VNC labels/)
    labels[8:9] = 127  # synapses
    Image.fromarray(labels).save(tmp_path / "labels.png")
    mask, encoding = read_mask(tmp_path / "labels.png", MaskRule(labels=[191]))
    assert mask.sum() == 20 and mask[5:7].all()
    assert "label map" in encoding
    # without the list, luminance > 127 takes membranes and mitochondria together
    assert read_mask(tmp_path / "labels.png")[0].sum() == 50


def test_threshold_is_configurable() -> None:
    a = np.zeros((4, 4), np.uint8)
    a[0] = 100
    assert normalise_mask(a).sum() == 0
    assert normalise_mask(a, MaskRule(threshold=50)).sum() == 4


def test_truncated_png_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "trunc.png"
    Image.fromarray((_truth() * 255).astype(np.uint8)).save(p)
    p.write_bytes(p.read_bytes()[:60])
    with pytest.raises(DataError, match=r"trunc\.png: unreadable or truncated"):
        read_mask(p)


def test_empty_after_normalisation_while_raw_is_not_is_an_error(tmp_path: Path) -> None:
    a = np.zeros((10, 10), np.uint8)
    a[3:6, 3:6] = 60  # a faint label: every pixel below 127
    Image.fromarray(a).save(tmp_path / "faint.png")
    with pytest.raises(DataError, match=r"faint\.png: mask is empty after normalisation.*mask_threshold"):
        read_mask(tmp_path / "faint.png")
    # a truly empty mask (constant raw) is fine
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "empty.png")
    mask, _ = read_mask(tmp_path / "empty.png")
    assert not mask.any()


def test_colour_masks_reject_label_lists() -> None:
    with pytest.raises(ValueError, match="single-channel"):
        normalise_mask(np.zeros((4, 4, 3), np.uint8), MaskRule(labels=[1]))
