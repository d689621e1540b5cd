"""`vfm-ablate data check|synth` through the real entry point, and check_dataset's findings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vfm_ablate import cli
from vfm_ablate.data.check import check_dataset, detect_entry
from vfm_ablate.data.synthetic import write_folder
from vfm_ablate.errors import ConfigError


@pytest.fixture
def run(capsys: pytest.CaptureFixture):
    """Call `vfm-ablate` main in this process, capturing what it prints."""

    def _run(*argv: str) -> tuple[int, str, str]:
        rc = cli.main(list(argv))
        out = capsys.readouterr()
        return rc, out.out, out.err

    return _run


def test_synth_then_check_is_clean(run, tmp_path: Path) -> None:
    out_dir = tmp_path / "demo"
    rc, out, _ = run(
        "data", "synth", str(out_dir), "--domain", "b", "--n-train", "3", "--n-test", "2", "--size", "32", "48"
    )
    assert rc == 0 and "vfm-ablate data check" in out
    assert len(list((out_dir / "test" / "masks").glob("*.png"))) == 2
    rc, out, err = run("data", "check", str(out_dir))
    assert rc == 0, err
    assert "layout folder" in out and "train 3, test 2" in out and "=> OK" in out
    assert "8-bit grey 0/255" in out and "32x48 uint8 (5)" in out


def test_check_broken_folder_exits_nonzero_naming_the_file(run, tmp_path: Path) -> None:
    write_folder(tmp_path, "a", 3, 2, (32, 32), 0)
    (tmp_path / "train" / "masks" / "001.png").unlink()
    bad = tmp_path / "test" / "images" / "000.png"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    rc, out, err = run("data", "check", str(tmp_path))
    assert rc == 2
    assert "train/images/001.png: no mask with stem '001'" in err
    # the report lists every problem, not just the first
    assert "=> BROKEN (2 problem(s))" in out
    assert "test/images/000.png: unreadable or truncated image file" in out


def test_check_collects_findings(tmp_path: Path) -> None:
    entry = write_folder(tmp_path, "a", 4, 2, (32, 32), 3)
    empty = np.zeros((32, 32), np.uint8)
    Image.fromarray(empty).save(tmp_path / "train" / "masks" / "000.png")
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(tmp_path / "train" / "masks" / "001.png")
    Image.fromarray(empty).convert("1").save(tmp_path / "train" / "masks" / "002.png")
    (tmp_path / "train" / "images" / "readme.txt").write_text("x")
    report = check_dataset(entry)
    assert report.ok
    assert report.counts() == {"train": 4, "test": 2}
    assert any("000.png: empty mask" in a for a in report.anomalies)
    assert any("001.png: foreground covers 100.0%" in a for a in report.anomalies)
    assert any("different mask encodings" in a for a in report.anomalies)
    assert any("readme.txt: ignored" in a for a in report.anomalies)
    assert report.encoding_of("train/masks/002.png") == "1-bit"


def test_detect_layouts(tmp_path: Path) -> None:
    (tmp_path / "lp" / "Train_In").mkdir(parents=True)
    (tmp_path / "lp" / "Train_Out").mkdir()
    assert detect_entry(tmp_path / "lp").layout == "lucchi_pp"
    (tmp_path / "v" / "stack1" / "raw").mkdir(parents=True)
    (tmp_path / "v" / "stack1" / "mitochondria").mkdir()
    assert detect_entry(tmp_path / "v").layout == "vnc"
    (tmp_path / "f" / "images").mkdir(parents=True)
    (tmp_path / "f" / "masks").mkdir()
    e = detect_entry(tmp_path / "f", options={"test_count": 2})
    assert (e.layout, e.test_count) == ("folder", 2)
    (tmp_path / "u").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "u" / "a.png")
    assert detect_entry(tmp_path / "u").layout == "unlabelled"
    (tmp_path / "x").mkdir()
    with pytest.raises(ConfigError, match="cannot tell the layout"):
        detect_entry(tmp_path / "x")
    with pytest.raises(ConfigError, match="layout 'vnc' does not take 'test_fraction'"):
        detect_entry(tmp_path / "v", options={"test_fraction": 0.5})


def test_check_with_layout_and_set_options(run, tmp_path: Path) -> None:
    write_folder(tmp_path, "a", 4, 1, (32, 32), 0)
    rc, out, err = run(
        "data",
        "check",
        str(tmp_path),
        "--layout",
        "folder",
        "--set",
        "image_dir=train/images",
        "--set",
        "mask_dir=train/masks",
        "--set",
        "test_count=1",
    )
    assert rc == 0, err
    assert "train 3, test 1" in out and "seeded split: 1 test slice(s) by split_seed 0" in out
    rc, _, err = run("data", "check", str(tmp_path), "--set", "mask_dri=x")
    assert rc == 2 and "Did you mean 'mask_dir'" in err


def test_check_builtin_synthetic_and_unknown_name(run) -> None:
    rc, out, _ = run("data", "check", "synthetic_b")
    assert rc == 0 and "train 8, test 4" in out
    rc, _, err = run("data", "check", "synthetic_c")
    assert rc == 2 and "neither an existing path nor a dataset name" in err and "Did you mean" in err
