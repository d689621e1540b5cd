"""The real EM files in ../shared/data: pairing, mask encodings and `data check` (skipped when absent)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vfm_ablate.data.check import check_dataset
from vfm_ablate.data.entries import resolve_dataset
from vfm_ablate.data.sources import clear_cache, load_dataset

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

pytestmark = pytest.mark.shared_data


@pytest.fixture(autouse=True)
def _data_root(monkeypatch: pytest.MonkeyPatch):
    if not (DATA / "vnc").is_dir() or not (DATA / "lucchi_pp_subset").is_dir():
        pytest.skip(f"real data not found at {DATA}")
    monkeypatch.setenv("VFM_ABLATE_DATA_ROOT", str(DATA))
    yield


def _reference_pairs(split: str) -> list[tuple[Path, Path]]:
    """Image maskNNNN.png <-> label N.png, computed here from the names alone."""
    root = DATA / "lucchi_pp_subset"
    pairs = []
    for img in (root / f"{split}_In").iterdir():
        k = int(re.fullmatch(r"mask(\d{4})\.png", img.name).group(1))
        pairs.append((img, root / f"{split}_Out" / f"{k}.png"))
    return sorted(pairs)


def _plain_label(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L")) > 127


def test_every_lucchi_pair_matches_the_reference() -> None:
    ds = load_dataset(resolve_dataset("lucchi_pp_subset"), split_seed=0)
    for split, slices in (("Train", ds.train), ("Test", ds.test)):
        ref = _reference_pairs(split)
        assert len(slices) == len(ref) == 17
        for s, (img, label) in zip(slices, ref):
            assert s.source == str(img)
            np.testing.assert_array_equal(s.image, np.asarray(Image.open(img)))
            np.testing.assert_array_equal(s.mask, _plain_label(label), err_msg=f"{img} paired with the wrong label")
        # the reference is discriminating: pairing by sorted position gets most of them wrong
        lexicographic = sorted((DATA / "lucchi_pp_subset" / f"{split}_Out").iterdir())
        wrong = sum(lab != r for lab, (_, r) in zip(lexicographic, ref))
        assert wrong >= 10


def test_vnc_one_bit_masks_have_foreground_like_their_neighbours() -> None:
    ds = load_dataset(resolve_dataset("vnc"), split_seed=0)
    by_name = {Path(s.source).stem: s for s in ds.train + ds.test}
    assert len(by_name) == 20
    for name in ("01", "07", "18", "00", "02", "06", "08", "17", "19"):
        fg = float(by_name[name].mask.mean())
        assert 0.04 <= fg <= 0.08, (name, fg)


def test_lucchi_rgba_test_masks_are_not_all_foreground() -> None:
    ds = load_dataset(resolve_dataset("lucchi_pp_subset"), split_seed=0)
    for s in ds.test:
        assert 0.04 <= float(s.mask.mean()) <= 0.10, s.source


def test_vnc_split_is_17_3_seeded_and_stack2_unlabelled() -> None:
    a = load_dataset(resolve_dataset("vnc"), split_seed=0)
    clear_cache()
    b = load_dataset(resolve_dataset("vnc"), split_seed=0)
    c = load_dataset(resolve_dataset("vnc"), split_seed=1)
    assert (len(a.train), len(a.test)) == (17, 3)
    assert [s.source for s in a.test] == [s.source for s in b.test]
    assert [s.source for s in a.test] != [s.source for s in c.test]
    assert a.train[0].image.dtype == np.uint8 and a.train[0].image.shape == (1024, 1024)
    s2 = load_dataset(resolve_dataset("vnc_stack2"), split_seed=0)
    assert len(s2.unlabelled) == 20 and all(s.mask is None for s in s2.unlabelled)
    assert all("stack2" in s.source for s in s2.unlabelled)


def test_data_check_flags_nothing_and_names_the_encodings() -> None:
    vnc = check_dataset(resolve_dataset("vnc"))
    lucchi = check_dataset(resolve_dataset("lucchi_pp_subset"))
    stack2 = check_dataset(resolve_dataset("vnc_stack2"))
    for report in (vnc, lucchi, stack2):
        assert report.ok, report.problems
    for k in ("01", "07", "18"):
        assert vnc.encoding_of(f"mitochondria/{k}.png") == "1-bit"
    assert vnc.encoding_of("mitochondria/00.png") == "8-bit grey anti-aliased"
    test_out = [s for s in lucchi.slices if "Test_Out" in (s.mask or "")]
    assert len(test_out) == 17 and all(s.encoding.startswith("RGBA") for s in test_out)
    assert vnc.counts() == {"train": 17, "test": 3} and lucchi.counts() == {"train": 17, "test": 17}
    text = vnc.format()
    assert (
        "1-bit: 3 file(s): stack1/mitochondria/01.png, stack1/mitochondria/07.png, stack1/mitochondria/18.png" in text
    )
