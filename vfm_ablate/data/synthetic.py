"""Synthetic EM-like slices with exact masks, for the demo and for tests that must not need real data.

Each slice is a warped Voronoi tessellation (dark cell membranes) over a
textured cytoplasm, with textured ellipses as mitochondria (dark rim, striated
"cristae" interior); the mask is the union of the ellipses. Domains differ in
brightness, contrast, noise, texture grain, membrane width and mitochondrion
size, so that a model trained on one domain sees a real shift on the other
(the paired-training question of the study, in miniature). Structure sizes are
relative to the image size, so any size looks alike; a slice depends only on
(domain, seed, split, index), never on how many slices are asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy.ndimage import gaussian_filter

from ..errors import DataError
from .images import Slice
from .synthetic_domains import DOMAINS, Domain

if TYPE_CHECKING:
    from .entries import DatasetEntry


_DOMAIN_IDS = {name: i for i, name in enumerate(sorted(DOMAINS))}
_SPLIT_IDS = {"train": 0, "test": 1, "unlabelled": 2}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    g = gaussian_filter(rng.standard_normal(shape).astype(np.float32), max(sigma, 0.5))
    return g / (g.std() + 1e-8)


def _membranes(rng: np.random.Generator, d: Domain, h: int, w: int, short: int) -> np.ndarray:
    """Membrane intensity in [0, 1]: warped Voronoi cell boundaries (where nearest and 2nd-nearest seeds tie)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    warp = 0.04 * short
    yy += warp * _smooth_noise(rng, (h, w), 0.08 * short)
    xx += warp * _smooth_noise(rng, (h, w), 0.08 * short)
    n = int(rng.integers(d.n_cells[0], d.n_cells[1] + 1))
    pts = rng.uniform([-0.1 * h, -0.1 * w], [1.1 * h, 1.1 * w], size=(n, 2)).astype(np.float32)
    d1 = np.full((h, w), np.inf, np.float32)
    d2 = np.full((h, w), np.inf, np.float32)
    for py, px in pts:
        dist = np.hypot(yy - py, xx - px)
        d2 = np.minimum(d2, np.maximum(d1, dist))
        d1 = np.minimum(d1, dist)
    width = max(d.membrane_width * short, 0.6)
    return np.exp(-(((d2 - d1) / (2 * width)) ** 2))


def _mitochondria(rng: np.random.Generator, d: Domain, h: int, w: int, short: int) -> tuple[np.ndarray, np.ndarray]:
    """(darkening in [0, ~1], bool mask) for a few textured ellipses with a dark rim and striated cristae."""
    dark = np.zeros((h, w), np.float32)
    mask = np.zeros((h, w), bool)
    n = int(rng.integers(d.n_mito[0], d.n_mito[1] + 1))
    rim_w = max(0.012 * short, 0.8)
    for _ in range(n):
        a = rng.uniform(*d.mito_axis) * short
        b = a * rng.uniform(0.4, 0.75)
        cy, cx = rng.uniform(0.1 * h, 0.9 * h), rng.uniform(0.1 * w, 0.9 * w)
        theta = rng.uniform(0, np.pi)
        period = max(b * rng.uniform(0.35, 0.6), 2.0)
        phase = rng.uniform(0, 2 * np.pi)
        r = int(np.ceil(a + 3 * rim_w))
        y0, y1 = max(int(cy) - r, 0), min(int(cy) + r + 1, h)
        x0, x1 = max(int(cx) - r, 0), min(int(cx) + r + 1, w)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
        v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
        rad = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        inside = rad <= 1.0
        cristae = 0.5 + 0.5 * np.cos(2 * np.pi * u / period + phase)
        fill = np.where(inside, d.mito_dark + d.cristae_amp * cristae, 0.0)
        rim = d.rim_dark * np.exp(-(((rad - 1.0) * b / rim_w) ** 2))
        dark[y0:y1, x0:x1] = np.maximum(dark[y0:y1, x0:x1], fill + rim)
        mask[y0:y1, x0:x1] |= inside
    return dark, mask


def _one_slice(domain: str, size: tuple[int, int], seed: int, split: str, index: int) -> Slice:
    d = DOMAINS[domain]
    h, w = size
    short = min(h, w)
    rng = np.random.default_rng([seed, _DOMAIN_IDS[domain], _SPLIT_IDS[split], index])
    img = np.full((h, w), d.background, np.float32)
    img += d.texture_amp * _smooth_noise(rng, (h, w), d.texture_sigma * short)
    img -= d.membrane_dark * _membranes(rng, d, h, w, short)
    dark, mask = _mitochondria(rng, d, h, w, short)
    img -= dark
    img = gaussian_filter(img, d.blur * short) if d.blur * short >= 0.3 else img
    img += d.noise * rng.standard_normal((h, w)).astype(np.float32)
    img = np.clip(img, 0.0, 1.0) ** d.gamma
    image = np.round(img * 255).astype(np.uint8)
    return Slice(image=image, mask=mask, source=f"synthetic:{domain}/seed{seed}/{split}/{index}")


def generate_slices(domain: str, n: int, size: tuple[int, int], seed: int, split: str = "train") -> list[Slice]:
    """`n` deterministic slices of `domain` (uint8 image, bool mask); `split` picks an independent stream."""
    if domain not in DOMAINS:
        from ..validation import suggest

        raise DataError(suggest(domain, set(DOMAINS), "synthetic domain"))
    if split not in _SPLIT_IDS:
        raise DataError(f"unknown synthetic split '{split}'; expected one of {sorted(_SPLIT_IDS)}")
    h, w = int(size[0]), int(size[1])
    if h < 16 or w < 16:
        raise DataError(f"synthetic size must be at least 16x16, got {h}x{w}")
    return [_one_slice(domain, (h, w), seed, split, i) for i in range(n)]


def write_folder(
    out_dir: str | Path,
    domain: str,
    n_train: int,
    n_test: int,
    size: tuple[int, int],
    seed: int,
    overwrite: bool = False,
) -> DatasetEntry:
    """Write a `folder`-layout dataset (train/ and test/ with images/ and masks/, 8-bit 0/255 PNG masks).

    Returns the DatasetEntry that reads it back; refuses to mix into existing data unless `overwrite`.
    """
    from PIL import Image

    out = Path(out_dir)
    for split in ("train", "test"):
        existing = out / split
        if existing.exists() and any(existing.rglob("*")) and not overwrite:
            raise DataError(f"{existing}: already holds files; choose an empty OUT_DIR or pass overwrite")
    for split, n in (("train", n_train), ("test", n_test)):
        img_dir, mask_dir = out / split / "images", out / split / "masks"
        img_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        for old in list(img_dir.glob("*.png")) + list(mask_dir.glob("*.png")):
            old.unlink()
        for i, s in enumerate(generate_slices(domain, n, size, seed, split=split)):
            Image.fromarray(s.image).save(img_dir / f"{i:03d}.png")
            Image.fromarray(s.mask.astype(np.uint8) * 255).save(mask_dir / f"{i:03d}.png")
    return split_folder_entry(out.resolve().name or f"synthetic_{domain}", out)


def split_folder_entry(name: str, folder: str | Path) -> DatasetEntry:
    """The entry that reads a `train/{images,masks}` + `test/{images,masks}` folder, PNGs paired by file stem (the
    layout `write_folder` writes)."""
    from .entries import DatasetEntry

    return DatasetEntry(
        name=name,
        layout="folder",
        path=str(folder),
        image_dir="train/images",
        mask_dir="train/masks",
        test_image_dir="test/images",
        test_mask_dir="test/masks",
        pairing="stem",
    )
