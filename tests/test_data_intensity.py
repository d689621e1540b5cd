"""Raw pixels to network input without silent conversions: 12-bit data in 16-bit files is not squashed, the rule is
per dataset and configurable, mixed bit depths and colour images are refused unless the entry allows them, and
`data check` shows channels, bit depth and the range actually used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vfm_ablate.cli import main
from vfm_ablate.data.entries import DatasetEntry
from vfm_ablate.data.intensity import IntensitySpec, IntensityStats
from vfm_ablate.data.sources import Slice, clear_cache, load_dataset
from vfm_ablate.data.transforms import image_to_tensor
from vfm_ablate.errors import ConfigError, DataError
from vfm_ablate.validation import validate

MASK = np.zeros((16, 16), np.uint8)
MASK[4:10, 4:10] = 255


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def folder(root: Path, images: list[np.ndarray]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(root / "images" / f"{i:02d}.png")
        Image.fromarray(MASK).save(root / "masks" / f"{i:02d}.png")
    return root


def twelve_bit(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, (16, 16)).astype(np.uint16)


def entry(root: Path, **options: object) -> DatasetEntry:
    return validate(DatasetEntry, {"name": "em", "layout": "folder", "path": str(root), "test_count": 1, **options})


def unit_interval(s: Slice) -> torch.Tensor:
    return image_to_tensor(s.image, s.image.shape, (0, 0, 0), (1, 1, 1), s.value_range)[0]


def test_twelve_bit_images_in_sixteen_bit_files_are_not_squashed(tmp_path: Path) -> None:
    images = [twelve_bit(i) for i in range(4)]
    images[0][0, 0], images[1][0, 0] = 0, 4095  # the data spans the full 12-bit range
    ds = load_dataset(entry(folder(tmp_path, images)), 0)
    slices = ds.train + ds.test
    assert all(s.value_range == (0.0, 4095.0) for s in slices)  # auto -> observed for 16-bit data
    x = unit_interval(slices[0])
    assert float(x.max()) > 0.99 and 0.4 < float(x.mean()) < 0.6  # would be ~0.03 divided by 65535
    # the dtype rule is still there when asked for (the old behaviour)
    clear_cache()
    dtype = load_dataset(entry(tmp_path, intensity={"rule": "dtype"}), 0)
    assert float(unit_interval((dtype.train + dtype.test)[0]).max()) < 0.07


def test_bits_and_percentile_rules(tmp_path: Path) -> None:
    images = [twelve_bit(i) for i in range(4)]
    images[2][0, 0] = 40000  # one hot pixel
    root = folder(tmp_path, images)
    with pytest.raises(DataError, match=r"02.png: value 40000 exceeds intensity bits 12"):
        load_dataset(entry(root, intensity={"rule": "bits", "bits": 12}), 0)
    clear_cache()
    ds = load_dataset(entry(root, intensity={"rule": "percentiles", "percentiles": [1, 99]}), 0)
    low, high = ds.train[0].value_range
    assert 20 < low < 100 and 4000 < high < 4096  # the hot pixel does not set the scale
    x = unit_interval(ds.train[0])
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0  # clipped outside the percentiles
    with pytest.raises(ConfigError, match="needs 'bits: N'"):
        entry(root, intensity={"rule": "bits"})


def test_mixed_bit_depths_are_an_error_unless_allowed(tmp_path: Path) -> None:
    images = [twelve_bit(i) for i in range(3)] + [np.full((16, 16), 200, np.uint8)]
    root = folder(tmp_path, images)
    with pytest.raises(DataError, match=r"mixed bit depths.*uint16.*uint8.*03.png.*mixed_bit_depths: true"):
        load_dataset(entry(root), 0)
    clear_cache()
    ds = load_dataset(entry(root, intensity={"mixed_bit_depths": True}), 0)
    ranges = {str(s.image.dtype): s.value_range for s in ds.train + ds.test}
    assert ranges["uint8"] == (0.0, 255.0) and ranges["uint16"][1] <= 4095  # each depth its own range


def test_colour_images_are_refused_unless_converted_on_request(tmp_path: Path) -> None:
    grey = [np.full((16, 16), 100, np.uint8) for _ in range(3)]
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 255
    root = folder(tmp_path, [*grey, rgb])
    with pytest.raises(DataError, match=r"03.png: a colour image.*colour: luminance"):
        load_dataset(entry(root), 0)
    clear_cache()
    ds = load_dataset(entry(root, colour="luminance"), 0)
    converted = [s for s in ds.train + ds.test if s.colour]
    assert len(converted) == 1 and converted[0].channels == 3 and int(converted[0].image.max()) == 76  # 0.299 * 255


def test_grey_stored_as_rgb_is_taken_as_it_is(tmp_path: Path) -> None:
    img = np.random.default_rng(0).integers(0, 256, (16, 16)).astype(np.uint8)
    root = folder(tmp_path, [img, img, np.dstack([img] * 3), img])
    ds = load_dataset(entry(root), 0)
    three = [s for s in ds.train + ds.test if s.channels == 3]
    assert len(three) == 1 and not three[0].colour
    np.testing.assert_array_equal(three[0].image, img)


def test_data_check_reports_channels_depth_and_the_range_used(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images = [twelve_bit(i) for i in range(4)]
    images[0][0, 0], images[1][0, 0] = 0, 4095
    root = folder(tmp_path / "em", images)
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "channels: 1 (grey) (4)" in out
    assert "uint16: values 0..4095 (12 of 16 bits used); rule observed: 0..4095 -> 0..1" in out
    assert any("images/01.png" in line and line.endswith("..4095") for line in out.splitlines())  # per slice
    mixed = folder(tmp_path / "mixed", [*images[:3], np.full((16, 16), 9, np.uint8)])
    assert main(["data", "check", str(mixed)]) == 2
    captured = capsys.readouterr()
    assert "mixed bit depths" in captured.out and "03.png" in captured.out
    rgb = np.dstack([np.full((16, 16), v, np.uint8) for v in (10, 20, 30)])
    colour = folder(tmp_path / "colour", [np.full((16, 16), 9, np.uint8)] * 3 + [rgb])
    assert main(["data", "check", str(colour)]) == 2
    assert "03.png: a colour image" in capsys.readouterr().out
    assert main(["data", "check", str(colour), "--set", "colour=luminance"]) == 0
    out = capsys.readouterr().out
    assert "3 differing (colour, converted by luminance) (1)" in out


def test_stats_percentiles_are_exact() -> None:
    stats = IntensityStats()
    stats.add(np.arange(100, dtype=np.uint8).reshape(10, 10), "a")
    assert stats.value_ranges(IntensitySpec(rule="percentiles", percentiles=(0, 100))) == {"uint8": (0.0, 99.0)}
    assert stats.value_ranges(IntensitySpec(rule="percentiles", percentiles=(10, 90))) == {"uint8": (9.0, 89.0)}
    assert stats.value_ranges(IntensitySpec(rule="observed")) == {"uint8": (0.0, 99.0)}


# ---------------------------------------------------------------------- with input-level domain alignment


def _aligned_inputs(tmp_path: Path, alignment: dict) -> dict[str, torch.Tensor]:
    """A 12-bit source (observed range 1000..3000) and an 8-bit target, prepared by the trial for `alignment`: per
    dataset, its training inputs in [0, 1] units (ImageNet normalisation undone) as one tensor."""
    from vfm_ablate.config import TrialSpec
    from vfm_ablate.models.registry import get_entry
    from vfm_ablate.trial.items import load_trial_data

    rng = np.random.default_rng(0)
    source = [rng.integers(1000, 3001, (28, 28)).astype(np.uint16) for _ in range(4)]  # 28: native = 2 patches
    target = [np.clip(rng.normal(60, 12, (28, 28)), 0, 255).astype(np.uint8) for _ in range(4)]
    datasets = {}
    for name, images in {"src": source, "tgt": target}.items():
        root = tmp_path / name
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        for i, img in enumerate(images):
            Image.fromarray(img).save(root / "images" / f"{i:02d}.png")
            Image.fromarray(np.kron(MASK[:14, :14], np.ones((2, 2), np.uint8))).save(root / "masks" / f"{i:02d}.png")
        datasets[name] = entry(root).model_copy(update={"name": name})
    spec = TrialSpec.model_validate(
        {
            "backbone": "tiny_vit_p14",
            "weights": "random",
            "data": {"train": ["src"], "target": ["tgt"], "resize": {"policy": "native"}},
            "alignment": alignment,
        }
    )
    data = load_trial_data(spec, get_entry("tiny_vit_p14"), datasets)
    mean, std = torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))
    out = {}
    for name, items in {"src": [*data.train[0], *data.val], "tgt": data.target[0]}.items():
        x = torch.stack([it.image for it in items])
        out[name] = x if alignment.get("input") == "zscore" else x * std[:, None, None] + mean[:, None, None]
    return out


def test_histogram_matched_pixels_use_the_reference_datasets_range(tmp_path: Path) -> None:
    """Matching the 8-bit target to the 12-bit source gives 16-bit pixels in 1000..3000: mapped by the source's
    range they fill [0, 1] like the source's own images, not a sliver near 0 (the target's 8-bit rule would clip
    them all to 1)."""
    x = _aligned_inputs(tmp_path, {"input": "histogram", "reference": "source"})
    for name in ("src", "tgt"):
        assert x[name].min() < 0.01 and x[name].max() > 0.99, name
    assert abs(float(x["tgt"].mean() - x["src"].mean())) < 0.02


def test_zscoring_a_sixteen_bit_dataset_with_its_own_range_gives_mean_0_std_1(tmp_path: Path) -> None:
    x = _aligned_inputs(tmp_path, {"input": "zscore"})
    for name, pixels in x.items():
        flat = pixels.transpose(0, 1).reshape(3, -1)
        assert flat.mean(dim=1).abs().max() < 1e-3, name
        assert (flat.std(dim=1, unbiased=False) - 1).abs().max() < 1e-3, name
