"""An unlabelled target dataset maps its pixels to [0, 1] by its intensity rule, exactly as the same dataset used
with labels does, whichever was loaded first in the process (a sweep worker may have read it either way before).
12-bit data stored in 16 bits: the observed range, not the dtype's (which would squash it to near-black)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from vfm_ablate.data.entries import DatasetEntry
from vfm_ablate.data.sources import clear_cache, load_dataset


@pytest.fixture
def twelve_bit(tmp_path: Path) -> DatasetEntry:
    rng = np.random.default_rng(4)
    for split in ("train", "test"):
        for sub in ("images", "masks"):
            (tmp_path / split / sub).mkdir(parents=True)
        for i in range(3):
            image = rng.integers(100, 4000, (16, 16)).astype(np.uint16)  # 12-bit values in a 16-bit file
            tifffile.imwrite(tmp_path / split / "images" / f"{i}.tif", image)
            mask = (rng.random((16, 16)) > 0.7).astype(np.uint8) * 255
            Image.fromarray(mask).save(tmp_path / split / "masks" / f"{i}.png")
    return DatasetEntry(
        name="d12", layout="folder", path=str(tmp_path), image_dir="train/images", mask_dir="train/masks",
        test_image_dir="test/images", test_mask_dir="test/masks",
    )  # fmt: skip


@pytest.mark.parametrize("labelled_first", [False, True])
def test_a_target_dataset_keeps_its_intensity_range(twelve_bit: DatasetEntry, labelled_first: bool) -> None:
    clear_cache()
    if labelled_first:
        labelled = load_dataset(twelve_bit, 0)
    target = load_dataset(twelve_bit, 0, labelled=0)  # an unlabelled target
    if not labelled_first:
        labelled = load_dataset(twelve_bit, 0)
    ranges = {s.value_range for part in (labelled.train, labelled.test) for s in part}
    assert len(ranges) == 1 and next(iter(ranges))[1] < 4000  # the observed range, not 65535
    assert target.training and all(s.mask is None for s in target.training)
    assert {s.value_range for part in (target.training, target.test) for s in part} == ranges
    clear_cache()
