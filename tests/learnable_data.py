"""Data with a clear learnable signal for the end-to-end correctness tests: bright discs on dark noise.

Written to disk as a `folder`-layout dataset (8-bit PNG images, 0/255 PNG masks, predefined test split), so a
trial reads it through the same loader as real data. Sizes are deliberately not patch multiples, so that the
network input (snapped to the patch grid) differs from the native size and native-resolution evaluation scores
other pixels than test-resolution evaluation.

`shuffle_train_masks` permutes the pixels of every training mask (test masks stay true): each image keeps its
foreground share, but which pixels are foreground no longer depends on the image. The control that shows a
"learns" test can fail. (Handing each image another image's mask instead leaves chance overlaps between the two
images' discs, enough for a Dice-trained model to pick up "bright = foreground" from ten images.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vfm_ablate.data.entries import DatasetEntry
from vfm_ablate.data.synthetic import split_folder_entry


def disc_slice(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 image, bool mask): 2-3 discs of grey ~190 on noise of grey ~70; the mask is the discs, exactly."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.zeros((h, w), bool)
    short = min(h, w)
    for _ in range(int(rng.integers(2, 4))):
        r = rng.uniform(0.12, 0.2) * short
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)  # anywhere, cut by the border: no spatial prior to learn
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    image = np.where(mask, 190.0, 70.0) + rng.normal(0.0, 25.0, (h, w))
    return np.clip(np.round(image), 0, 255).astype(np.uint8), mask


def write_disc_dataset(
    root: Path,
    name: str,
    size: tuple[int, int],
    n_train: int = 12,
    n_test: int = 4,
    seed: int = 0,
    shuffle_train_masks: bool = False,
) -> DatasetEntry:
    """A folder dataset under `root/name`; returns the entry that reads it (train/ and test/ splits)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / name
    for split, n in (("train", n_train), ("test", n_test)):
        pairs = [disc_slice(rng, size) for _ in range(n)]
        masks = [m for _, m in pairs]
        if shuffle_train_masks and split == "train":
            shuffler = np.random.default_rng([seed, 1])
            masks = [shuffler.permutation(m.ravel()).reshape(m.shape) for m in masks]
        (folder / split / "images").mkdir(parents=True, exist_ok=True)
        (folder / split / "masks").mkdir(parents=True, exist_ok=True)
        for i, ((image, _), mask) in enumerate(zip(pairs, masks)):
            Image.fromarray(image).save(folder / split / "images" / f"{i:03d}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / split / "masks" / f"{i:03d}.png")
    return split_folder_entry(name, folder)


def read_split(entry: DatasetEntry, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, 0/1 mask) pairs of a written split, read back with PIL and numpy only (no vfm_ablate loader)."""
    folder = Path(entry.path or "") / split
    out = []
    for image_file in sorted((folder / "images").glob("*.png")):
        image = np.asarray(Image.open(image_file))
        mask = np.asarray(Image.open(folder / "masks" / image_file.name)) > 127
        out.append((image, mask))
    return out


def nearest_resize(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize that samples pixel centres (PIL's NEAREST), in numpy: the mask a trial scores
    at test resolution, computed without vfm_ablate."""
    h, w = size
    rows = np.minimum(((np.arange(h) + 0.5) * mask.shape[0] / h).astype(int), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * mask.shape[1] / w).astype(int), mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


def trivial_ious(masks: list[np.ndarray]) -> dict[str, float]:
    """Test IoU_fg of the two trivial predictors on the same pixels: all background (0) and all foreground."""
    fg = sum(int(m.sum()) for m in masks)
    pixels = sum(m.size for m in masks)
    return {"all_background": 0.0, "all_foreground": fg / pixels}
