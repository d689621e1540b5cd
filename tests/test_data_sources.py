"""Loading on-disk layouts: pairing, splits, caching and a clear error for each kind of broken folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from vfm_ablate.data.entries import DatasetEntry, builtin_datasets, resolve_dataset
from vfm_ablate.data.layouts import list_slices
from vfm_ablate.data.sources import clear_cache, load_dataset
from vfm_ablate.data.synthetic import write_folder
from vfm_ablate.errors import ConfigError, DataError
from vfm_ablate.validation import validate


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def _write_pair(img_dir: Path, mask_dir: Path, img_name: str, mask_name: str, value: int, size=(16, 20)) -> None:
    """An image whose pixels all equal `value` and a mask with `value` foreground pixels, to check pairing."""
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(img_dir / img_name)
    m = np.zeros(size, np.uint8)
    m.flat[:value] = 255
    Image.fromarray(m).save(mask_dir / mask_name)


def _lucchi_like(root: Path, n: int) -> None:
    for split in ("Train", "Test"):
        for k in range(n):
            _write_pair(root / f"{split}_In", root / f"{split}_Out", f"mask{k:04d}.png", f"{k}.png", value=k + 1)


def test_lucchi_layout_pairs_by_number_not_sorted_position(tmp_path: Path) -> None:
    _lucchi_like(tmp_path, 12)  # 12 > 10: lexicographic order of labels would be 0, 1, 10, 11, 2, ...
    ds = load_dataset(DatasetEntry(name="l", layout="lucchi_pp", path=str(tmp_path)), split_seed=0)
    assert len(ds.train) == len(ds.test) == 12
    for s in ds.train + ds.test:
        value = int(s.image[0, 0])
        assert s.mask is not None and int(s.mask.sum()) == value, s.source
    assert ds.train[2].source.endswith("Train_In/mask0002.png")


def test_folder_layout_pairs_by_stem_and_splits_by_seed(tmp_path: Path) -> None:
    for k in range(10):
        _write_pair(
            tmp_path / "images",
            tmp_path / "masks",
            f"s{k:02d}.tif" if k % 2 else f"s{k:02d}.png",
            f"s{k:02d}.png",
            value=k + 1,
        )
    entry = DatasetEntry(name="f", layout="folder", path=str(tmp_path), test_count=3)
    a, b, c = load_dataset(entry, 0), load_dataset(entry, 0), load_dataset(entry, 1)
    assert a is b  # cached
    assert len(a.train) == 7 and len(a.test) == 3
    assert [s.source for s in a.test] != [s.source for s in c.test]
    assert {s.source for s in a.train} | {s.source for s in a.test} == {s.source for s in c.train} | {
        s.source for s in c.test
    }
    for s in a.train + a.test:
        assert int(s.mask.sum()) == int(s.image[0, 0])
    with pytest.raises(ValueError):  # cached arrays are shared between trials: read-only
        a.train[0].image[0, 0] = 0


def test_synthetic_folder_round_trip(tmp_path: Path) -> None:
    entry = write_folder(tmp_path / "syn", "b", n_train=3, n_test=2, size=(32, 40), seed=5)
    ds = load_dataset(entry, 0)
    built = load_dataset(
        DatasetEntry(name="m", layout="synthetic", domain="b", n_train=3, n_test=2, size=(32, 40), seed=5), 0
    )
    assert len(ds.train) == 3 and len(ds.test) == 2
    for on_disk, in_memory in zip(ds.train + ds.test, built.train + built.test):
        np.testing.assert_array_equal(on_disk.image, in_memory.image)
        np.testing.assert_array_equal(on_disk.mask, in_memory.mask)


def test_tiff_stack_layout(tmp_path: Path) -> None:
    imgs = np.stack([np.full((8, 10), k + 1, np.uint16) * 1000 for k in range(6)])
    masks = np.zeros((6, 8, 10), np.uint8)
    for k in range(6):
        masks[k].flat[: k + 1] = 255
    tifffile.imwrite(tmp_path / "img.tif", imgs, photometric="minisblack")
    tifffile.imwrite(tmp_path / "lbl.tif", masks, photometric="minisblack")
    entry = DatasetEntry(
        name="t", layout="tiff_stack", path=str(tmp_path), image_stack="img.tif", mask_stack="lbl.tif", test_count=2
    )
    ds = load_dataset(entry, 3)
    assert len(ds.train) == 4 and len(ds.test) == 2
    for s in ds.train + ds.test:
        assert s.image.dtype == np.uint16
        assert int(s.mask.sum()) * 1000 == int(s.image[0, 0])
        assert s.source.startswith(str(tmp_path / "img.tif") + "[")


def test_tiff_stack_page_count_mismatch(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((5, 8, 8), np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "lbl.tif", np.zeros((4, 8, 8), np.uint8), photometric="minisblack")
    entry = DatasetEntry(name="t", layout="tiff_stack", path=str(tmp_path), image_stack="img.tif", mask_stack="lbl.tif")
    with pytest.raises(DataError, match=r"lbl\.tif: mask stack has 4 pages but image stack .*img\.tif has 5"):
        load_dataset(entry, 0)


def test_unlabelled_folder_and_stack(tmp_path: Path) -> None:
    for k in range(3):
        Image.fromarray(np.full((8, 8), k, np.uint8)).save(tmp_path / f"{k}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = load_dataset(DatasetEntry(name="u", layout="unlabelled", path=str(tmp_path)), 0)
    assert [int(s.image[0, 0]) for s in ds.unlabelled] == [0, 1, 2] and not ds.train and not ds.test
    assert all(s.mask is None for s in ds.unlabelled)
    tifffile.imwrite(tmp_path / "vol.tif", np.zeros((4, 8, 8), np.uint8), photometric="minisblack")
    stack = load_dataset(DatasetEntry(name="v", layout="unlabelled", path=str(tmp_path), image_stack="vol.tif"), 0)
    assert len(stack.unlabelled) == 4


# ------------------------------------------------------------------ broken folders: each names the file


def _good_folder(root: Path, n: int = 4) -> None:
    for k in range(n):
        _write_pair(root / "images", root / "masks", f"{k:02d}.png", f"{k:02d}.png", value=k + 1)


def _load(root: Path, **options) -> None:
    load_dataset(DatasetEntry(name="broken", layout="folder", path=str(root), test_count=1, **options), 0)


def test_missing_mask(tmp_path: Path) -> None:
    _good_folder(tmp_path)
    (tmp_path / "masks" / "02.png").unlink()
    with pytest.raises(DataError, match=r"images/02\.png: no mask with stem '02'"):
        _load(tmp_path)


def test_extra_mask(tmp_path: Path) -> None:
    _good_folder(tmp_path)
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(tmp_path / "masks" / "09.png")
    with pytest.raises(DataError, match=r"masks/09\.png: mask has no image"):
        _load(tmp_path)


def test_truncated_png(tmp_path: Path) -> None:
    _good_folder(tmp_path)
    p = tmp_path / "images" / "01.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 20), dtype=np.uint8)).save(p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(DataError, match=r"images/01\.png: unreadable or truncated image"):
        _load(tmp_path)


def test_image_mask_size_mismatch(tmp_path: Path) -> None:
    _good_folder(tmp_path)
    Image.fromarray(np.zeros((16, 21), np.uint8)).save(tmp_path / "masks" / "03.png")
    with pytest.raises(DataError, match=r"masks/03\.png: mask is 16x21 but its image .*images/03\.png is 16x20"):
        _load(tmp_path)


def test_lexicographic_only_names_are_refused(tmp_path: Path) -> None:
    """Names that pair neither by stem nor by number must not be paired by sorted position."""
    for a, b in (("alpha", "first"), ("beta", "second"), ("gamma", "third")):
        _write_pair(tmp_path / "images", tmp_path / "masks", f"{a}.png", f"{b}_label.png", value=3)
    with pytest.raises(DataError, match=r"images/alpha\.png: image name carries no number .*sorted position"):
        _load(tmp_path)


def test_duplicate_numbers_are_refused(tmp_path: Path) -> None:
    _write_pair(tmp_path / "images", tmp_path / "masks", "img1.png", "1.png", value=1)
    _write_pair(tmp_path / "images", tmp_path / "masks", "img01.png", "2.png", value=2)
    with pytest.raises(DataError, match=r"same pairing key 1"):
        _load(tmp_path, pairing="number")


def test_mask_empty_after_normalisation(tmp_path: Path) -> None:
    _good_folder(tmp_path)
    faint = np.zeros((16, 20), np.uint8)
    faint[2:5, 2:5] = 90
    Image.fromarray(faint).save(tmp_path / "masks" / "01.png")
    with pytest.raises(DataError, match=r"masks/01\.png: mask is empty after normalisation"):
        _load(tmp_path)
    clear_cache()
    ds = load_dataset(DatasetEntry(name="ok", layout="folder", path=str(tmp_path), test_count=1, mask_threshold=50), 0)
    assert len(ds.train) + len(ds.test) == 4


def test_missing_dataset_folder_mentions_the_data_root(tmp_path: Path) -> None:
    """The built-ins live under $VFM_ABLATE_DATA_ROOT: say so for them, not for a user's own entry."""
    with pytest.raises(DataError, match=r"nowhere: dataset 'vnc' folder not found.*VFM_ABLATE_DATA_ROOT"):
        load_dataset(DatasetEntry(name="vnc", layout="vnc", path=str(tmp_path / "nowhere")), 0)
    with pytest.raises(DataError, match=r"mine: dataset 'x' folder not found\n"):
        load_dataset(DatasetEntry(name="x", layout="vnc", path=str(tmp_path / "mine")), 0)


def test_too_few_slices_for_the_test_split(tmp_path: Path) -> None:
    _good_folder(tmp_path, n=3)
    with pytest.raises(DataError, match=r"has 3 labelled slices, too few for 3 test slices"):
        load_dataset(DatasetEntry(name="few", layout="folder", path=str(tmp_path), test_count=3), 0)


# ------------------------------------------------------------------ entries


def test_entry_options_must_fit_the_layout() -> None:
    with pytest.raises(ConfigError, match=r"layout 'lucchi_pp' does not take 'test_count'"):
        validate(DatasetEntry, {"name": "x", "layout": "lucchi_pp", "path": "p", "test_count": 3}, "sweep.yaml")
    with pytest.raises(ConfigError, match=r"unknown key 'mask_dri'.*Did you mean 'mask_dir'"):
        validate(DatasetEntry, {"name": "x", "layout": "folder", "path": "p", "mask_dri": "m"}, "sweep.yaml")
    with pytest.raises(ConfigError, match=r"needs 'image_stack', 'mask_stack'"):
        validate(DatasetEntry, {"name": "x", "layout": "tiff_stack", "path": "p"}, "sweep.yaml")
    with pytest.raises(ConfigError, match=r"'test_image_dir' and 'test_mask_dir' go together"):
        validate(DatasetEntry, {"name": "x", "layout": "folder", "path": "p", "test_image_dir": "t"}, "s.yaml")
    with pytest.raises(ConfigError, match=r"unknown synthetic domain 'c'"):
        validate(DatasetEntry, {"name": "x", "layout": "synthetic", "domain": "c"}, "s.yaml")


def test_builtins_follow_the_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VFM_ABLATE_DATA_ROOT", str(tmp_path))
    (tmp_path / "lucchi_pp_subset").mkdir()
    b = builtin_datasets()
    assert set(b) >= {"lucchi_pp", "lucchi_pp_subset", "vnc", "vnc_stack2", "synthetic_a", "synthetic_b"}
    # the full dataset's name never reads the subset (its results would carry the full dataset's name)
    assert b["lucchi_pp"].path == str(tmp_path / "lucchi_pp")
    assert b["lucchi_pp_subset"].path == str(tmp_path / "lucchi_pp_subset")
    problems = list_slices(b["lucchi_pp"]).problems
    assert problems == [
        f"{tmp_path / 'lucchi_pp'}: dataset 'lucchi_pp' folder not found (built-in datasets live under "
        f"$VFM_ABLATE_DATA_ROOT, currently '{tmp_path}'; {tmp_path / 'lucchi_pp_subset'} beside it is a subset, the "
        "dataset 'lucchi_pp_subset': name that one to train on the subset)"
    ]
    assert b["vnc"].path == str(tmp_path / "vnc") and b["vnc"].test_count == 3


def test_resolve_dataset_prefers_extra_and_suggests() -> None:
    mine = DatasetEntry(name="vnc", layout="synthetic", domain="a")
    assert resolve_dataset("vnc", {"vnc": mine}) is mine
    with pytest.raises(ConfigError, match=r"unknown dataset 'lucchi'.*Did you mean 'lucchi_pp'"):
        resolve_dataset("lucchi")


def test_builtin_synthetic_is_small_and_deterministic() -> None:
    a1 = load_dataset(resolve_dataset("synthetic_a"), 0)
    clear_cache()
    a2 = load_dataset(resolve_dataset("synthetic_a"), 0)
    assert (len(a1.train), len(a1.test)) == (8, 4) and a1.train[0].image.shape == (128, 128)
    for x, y in zip(a1.train + a1.test, a2.train + a2.test):
        np.testing.assert_array_equal(x.image, y.image)


def test_sixteen_bit_images_are_kept_as_native_uint16(tmp_path: Path) -> None:
    _good_folder(tmp_path, n=3)
    values = (np.arange(16 * 20).reshape(16, 20) * 150).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "images" / "01.png")  # 16-bit PNG (stored big-endian)
    tifffile.imwrite(tmp_path / "images" / "02.tif", values.astype(">u2"), byteorder=">")
    (tmp_path / "images" / "02.png").unlink()
    mixed = {"mixed_bit_depths": True}  # one 8-bit image is left among the 16-bit ones
    ds = load_dataset(DatasetEntry(name="be", layout="folder", path=str(tmp_path), test_count=1, intensity=mixed), 0)
    read = {Path(s.source).name: s.image for s in ds.train + ds.test}
    for name in ("01.png", "02.tif"):
        assert read[name].dtype == np.uint16 and read[name].dtype.isnative
        np.testing.assert_array_equal(read[name], values)
