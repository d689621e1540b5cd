"""`vfm-ablate diagnose`: standalone, and re-measuring a finished LoRA trial from its checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vfm_ablate.cli import diagnose as diagnose_cli
from vfm_ablate.config import TrialSpec
from vfm_ablate.data.entries import DatasetEntry
from vfm_ablate.errors import CheckpointError, ConfigError
from vfm_ablate.models.backbones import build_backbone
from vfm_ablate.models.registry import get_entry
from vfm_ablate.validation import validate

DATASETS = {
    "syn_a": {"layout": "synthetic", "domain": "a", "n_train": 3, "n_test": 4, "size": [40, 56], "seed": 3},
    "syn_b": {"layout": "synthetic", "domain": "b", "n_train": 3, "n_test": 4, "size": [56, 56], "seed": 4},
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The test machine's few cores are shared: one intra-op thread is far faster there than oversubscribing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def diagnose(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="vfm-ablate")
    diagnose_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["diagnose", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def entries_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("entries") / "entries.yaml"
    path.write_text(yaml.safe_dump({"datasets": DATASETS}))
    return path


@pytest.fixture(scope="module")
def lora_trial(tmp_path_factory) -> Path:
    """A real LoRA trial (trial.run_trial) on a tiny ViT whose 'pretrained' weights are a local checkpoint file."""
    from vfm_ablate.trial import run_trial

    root = tmp_path_factory.mktemp("trial")
    torch.manual_seed(0)
    weights = root / "tiny_weights.pth"
    torch.save(build_backbone(get_entry("tiny_vit_p14"), pretrained=False).net.state_dict(), weights)
    entry = get_entry("tiny_vit_p14").model_copy(update={"name": "tiny_local", "checkpoint": str(weights)})
    spec = validate(
        TrialSpec,
        {
            "backbone": "tiny_local",
            "regime": "lora",
            "weights": "pretrained",
            "data": {"train": ["syn_a", "syn_b"], "resize": {"target": 56}},
            "optim": {"max_epochs": 1, "lr": 1e-2},
            "num_overlays": 0,
            "split_seed": 2,
            "seed": 5,
            "diagnostics": {"enabled": True},
        },
    )
    datasets = {n: DatasetEntry(name=n, **facts) for n, facts in DATASETS.items()}
    run_trial(spec, root / "out", backbones={"tiny_local": entry}, datasets=datasets)
    return root / "out"


def test_checkpoint_reproduces_the_trials_frozen_and_adapted_diagnostics(lora_trial, entries_file, tmp_path, capsys):
    trial_metrics = json.loads((lora_trial / "metrics.json").read_text())["metrics"]
    out = tmp_path / "diag"
    rc = diagnose(
        "--checkpoint",
        str(lora_trial / "trainable_checkpoint.pt"),
        "--datasets",
        "syn_a",
        "syn_b",
        "--entries",
        str(entries_file),
        "--out",
        str(out),  # seed, split seed, resize: the trial's
    )
    assert rc == 0
    report = json.loads((out / "metrics.json").read_text())
    assert list(report["stages"]) == ["frozen", "adapted"] and report["regime"] == "lora"
    for stage in ("frozen", "adapted"):
        ours = report["stages"][stage]["metrics"]
        theirs = {k.split("/", 2)[2]: v for k, v in trial_metrics.items() if k.startswith(f"diag/{stage}/")}
        assert set(ours) == set(theirs)
        for key in ours:  # the rebuilt backbone (+ trained adapters) gives the trial's own numbers
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), (stage, key)
        assert (out / f"pca_{stage}.png").read_bytes()[:4] == b"\x89PNG"
    frozen = np.load(out / "embeddings_frozen.npz")
    adapted = np.load(out / "embeddings_adapted.npz")
    assert frozen["syn_a"].shape == adapted["syn_a"].shape == (4, 48)
    assert np.abs(frozen["syn_a"] - adapted["syn_a"]).max() > 1e-4  # the adapters changed the features
    assert report["stages"]["adapted"]["backbone_load"]["trial_tensors"] > 0
    printed = capsys.readouterr().out
    assert "frozen" in printed and "adapted" in printed and "probe_auc" in printed


def test_standalone_run_prints_metrics_and_writes_outputs(entries_file, tmp_path, capsys):
    out = tmp_path / "diag"
    rc = diagnose(
        "--backbone",
        "tiny_vit_p14",
        "--weights",
        "random",
        "--datasets",
        "syn_a",
        "syn_b",
        "--split",
        "all",
        "--entries",
        str(entries_file),
        "--resize-target",
        "42",
        "--pca-dim",
        "3",
        "--permutations",
        "99",
        "--out",
        str(out),
    )
    assert rc == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["datasets"] == {"syn_a": {"n": 7, "split": "all"}, "syn_b": {"n": 7, "split": "all"}}
    metrics = report["stages"]["frozen"]["metrics"]
    assert set(metrics) == {"fd", "fd_effective_rank", "mmd", "mmd_pvalue", "probe_acc", "probe_auc"}
    assert metrics["fd_effective_rank"] == 3.0  # computed on the 3-component joint PCA
    assert metrics["mmd_pvalue"] >= 0.01  # 99 permutations: p >= 1/100
    assert report["stages"]["frozen"]["fd_warnings"] == []
    assert len(report["stages"]["frozen"]["pca_explained_variance"]) == 2
    assert np.load(out / "embeddings_frozen.npz")["syn_b"].shape == (7, 48)
    printed = capsys.readouterr().out
    assert "syn_a (all, n=7)" in printed and "fd_effective_rank" in printed


def test_user_errors_name_what_is_wrong(lora_trial, entries_file, tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset 'syn_bb'. Did you mean 'syn_b'"):
        diagnose(
            "--backbone",
            "tiny_vit_p14",
            "--weights",
            "random",
            "--datasets",
            "syn_a",
            "syn_bb",
            "--entries",
            str(entries_file),
            "--out",
            str(tmp_path),
        )
    with pytest.raises(ConfigError, match="at least two datasets"):
        diagnose(
            "--backbone",
            "tiny_vit_p14",
            "--weights",
            "random",
            "--datasets",
            "syn_a",
            "--entries",
            str(entries_file),
            "--out",
            str(tmp_path),
        )
    with pytest.raises(ConfigError, match="unknown backbone 'efficientnet_lite'. Did you mean 'efficientnet_lite0'"):
        diagnose(
            "--backbone",
            "efficientnet_lite",
            "--datasets",
            "syn_a",
            "syn_b",
            "--entries",
            str(entries_file),
            "--out",
            str(tmp_path),
        )
    ckpt = lora_trial / "trainable_checkpoint.pt"
    with pytest.raises(ConfigError, match="trained with backbone 'tiny_local'"):
        diagnose(
            "--checkpoint",
            str(ckpt),
            "--backbone",
            "tiny_vit_p14",
            "--datasets",
            "syn_a",
            "syn_b",
            "--entries",
            str(entries_file),
            "--out",
            str(tmp_path),
        )
    lonely = tmp_path / "lonely" / "trainable_checkpoint.pt"
    lonely.parent.mkdir()
    lonely.write_bytes(ckpt.read_bytes())
    with pytest.raises(CheckpointError, match="config.yaml is not next to it"):
        diagnose(
            "--checkpoint",
            str(lonely),
            "--datasets",
            "syn_a",
            "syn_b",
            "--entries",
            str(entries_file),
            "--out",
            str(tmp_path),
        )
    config = yaml.safe_load((lora_trial / "config.yaml").read_text())
    config["trial"]["weights"] = "random"
    (lonely.parent / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(CheckpointError, match="LoRA trial started from random weights"):
        diagnose(
            "--checkpoint",
            str(lonely),
            "--datasets",
            "syn_a",
            "syn_b",
            "--entries",
            str(entries_file),
            "--out",
            str(tmp_path),
        )
