"""`fetch` for pretrained weights, and the offline-readiness check, without internet: a local Hugging Face hub
endpoint (HF_ENDPOINT) serves tiny random-init weights under the real repo names of a timm and an open_clip tag;
huggingface_hub itself fills an empty HF_HOME, and timm / open_clip then load from it with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save

from tests.local_server import COMMIT, LocalServer
from tests.sweep_helpers import TINY_DATA
from vfm_ablate.models.backbones import _open_clip_config
from vfm_ablate.models.registry import BackboneEntry, get_entry

ROOT = Path(__file__).resolve().parents[1]
TIMM_REPO = "timm/vit_small_patch14_reg4_dinov2.lvd142m"  # what timm's `lvd142m` tag of this model names
CLIP_REPO = "laion/CLIP-ViT-B-16-laion2B-s34B-b88K"  # what open_clip's `laion2b_s34b_b88k` tag of ViT-B-16 names


def hub_entries() -> dict[str, BackboneEntry]:
    """The tiny test backbones, declared with real pretrained tags (the weights behind them are the test's)."""
    vit = get_entry("tiny_vit_p14")
    clip = get_entry("tiny_openclip")
    clip_kwargs = {**clip.model_kwargs, "text_cfg": {"width": 32, "layers": 1, "heads": 2}}  # a tiny text tower too
    return {
        "hub_vit": vit.model_copy(update={"name": "hub_vit", "pretrained_tag": "lvd142m"}),
        "hub_clip": clip.model_copy(
            update={"name": "hub_clip", "pretrained_tag": "laion2b_s34b_b88k", "model_kwargs": clip_kwargs}
        ),
    }


def random_weights(entry: BackboneEntry) -> dict[str, torch.Tensor]:
    """A full random-init state dict of the entry's network, as its library saves it (nothing downloaded)."""
    torch.manual_seed(7)
    if entry.library == "timm":
        import timm

        net = timm.create_model(entry.model_id, num_classes=0, dynamic_img_size=True, **entry.model_kwargs)
    else:
        import open_clip

        cfg = _open_clip_config(entry)
        net = open_clip.create_model(entry.model_id, **{k: cfg[k] for k in entry.model_kwargs})
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


def write_sweep(path: Path) -> Path:
    entries = {
        name: e.model_dump(mode="json", exclude={"name"}, exclude_defaults=True) for name, e in hub_entries().items()
    }
    sweep = {
        "name": "hub",
        "base": {
            "backbone": "hub_vit",
            "device": "cpu",
            "num_overlays": 0,
            "data": {"train": ["sa"], "resize": {"policy": "native"}},
            "optim": {"max_epochs": 1},
        },
        "axes": {"backbone": ["hub_vit", "hub_clip"]},
        "backbones": entries,
        "datasets": {"sa": TINY_DATA},
        "tracking": {"enabled": False},
    }
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def vfm(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`vfm-ablate ...` in a fresh process with its own HF_HOME and data root (huggingface_hub reads env at import)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k != "TRANSFORMERS_OFFLINE"}
    full = {
        **base,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "HF_HOME": str(tmp_path / "hf"),
        "VFM_ABLATE_DATA_ROOT": str(tmp_path / "data"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=full, capture_output=True, text=True, timeout=400)


@pytest.mark.slow(seconds=20)
def test_offline_with_weights_missing_the_run_stops_before_ray_with_the_fetch_command(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path / "hub.yaml")
    done = vfm(tmp_path, "-m", "vfm_ablate", "run", str(sweep), "--storage-path", "results", HF_HUB_OFFLINE="1")
    assert done.returncode == 2, done.stdout + done.stderr
    err = done.stderr
    assert "HF_HUB_OFFLINE=1: these trials cannot run offline; missing before launch" in err
    assert (
        f"weights hub_vit: hf {TIMM_REPO} (not in the Hugging Face cache {tmp_path / 'hf' / 'hub'}; 1 trial(s))" in err
    )
    assert f"weights hub_clip: hf {CLIP_REPO}" in err
    assert f"vfm-ablate fetch {sweep}" in err
    assert not (tmp_path / "results").exists(), "nothing was started: no storage, no Ray"
    assert "Ray" not in done.stdout

    # fetch itself, offline: the first hub download fails saying why, the others are not tried
    fetched = vfm(tmp_path, "-m", "vfm_ablate", "fetch", str(sweep), HF_HUB_OFFLINE="1")
    assert fetched.returncode == 2
    assert "HF_HUB_OFFLINE is set: run fetch where the network is reachable, without it" in fetched.stderr
    assert "weights hub_clip: not tried, the hub was unreachable for hub_vit" in fetched.stderr


def test_a_backbone_built_offline_without_its_weights_names_the_fetch_command(tmp_path: Path) -> None:
    """Past the pre-launch check (a notebook, `vfm-ablate train`), the load error itself says how to fix it."""
    code = (
        "from vfm_ablate.errors import CheckpointError\n"
        "from vfm_ablate.models.backbones import build_backbone\n"
        "from vfm_ablate.models.registry import get_entry\n"
        "try:\n"
        "    build_backbone(get_entry('dinov2_vits14_reg'), pretrained=True)\n"
        "except CheckpointError as err:\n"
        "    print(err)\n"
    )
    done = vfm(tmp_path, "-c", code, HF_HUB_OFFLINE="1")
    assert done.returncode == 0, done.stderr
    assert "backbone 'dinov2_vits14_reg': could not load pretrained weights" in done.stdout
    assert "run `vfm-ablate fetch dinov2_vits14_reg` on a connected one" in done.stdout


@pytest.mark.slow(seconds=25)
def test_fetch_fills_the_cache_timm_and_open_clip_load_offline_and_a_rerun_is_a_no_op(
    local_server: LocalServer, tmp_path: Path
) -> None:
    entries = hub_entries()
    weights = {name: random_weights(e) for name, e in entries.items()}
    local_server.serve_hub_file(TIMM_REPO, "model.safetensors", save(weights["hub_vit"]))
    local_server.serve_hub_file(CLIP_REPO, "open_clip_model.safetensors", save(weights["hub_clip"]))
    timm_file = f"/{TIMM_REPO}/resolve/main/model.safetensors"
    # the transfer breaks half-way once: huggingface_hub retries at once (from the last whole 10 MiB chunk it holds:
    # from zero for a file this small) in a temporary file that becomes the cache entry only when complete
    local_server.cut_off[timm_file] = 1
    sweep = write_sweep(tmp_path / "hub.yaml")

    done = vfm(tmp_path, "-m", "vfm_ablate", "fetch", str(sweep), HF_ENDPOINT=local_server.url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("downloaded") == 2 and "all present: the trials need no network" in done.stdout
    assert len(local_server.gets(timm_file)) == 2 and "Trying to resume download" in done.stderr
    snapshot = tmp_path / "hf" / "hub" / f"models--{TIMM_REPO.replace('/', '--')}" / "snapshots" / COMMIT
    assert (snapshot / "model.safetensors").read_bytes() == local_server.files[timm_file], "complete, in hf's layout"
    assert not list((tmp_path / "hf").rglob("*.incomplete"))

    before = len(local_server.requests)
    again = vfm(tmp_path, "-m", "vfm_ablate", "fetch", str(sweep), HF_ENDPOINT=local_server.url)
    assert again.returncode == 0 and again.stdout.count("already there") == 2, again.stdout + again.stderr
    assert len(local_server.requests) == before, "a second fetch never touches the network"

    # offline, with no endpoint at all: the dry run says present, and both libraries load exactly these weights
    script = f"""
import sys, torch
from safetensors.torch import load_file
from vfm_ablate.cli.main import main
from vfm_ablate.models.backbones import build_backbone
from vfm_ablate.sweep.spec import load_sweep
assert main(["run", {str(sweep)!r}, "--dry-run"]) == 0
sweep = load_sweep({str(sweep)!r})
for name, prefix in (("hub_vit", ""), ("hub_clip", "visual.")):
    backbone = build_backbone(sweep.backbones[name], pretrained=True)
    served = load_file(sys.argv[1] + "/" + name + ".safetensors")
    own = backbone.net.state_dict()
    same = [k for k in own if torch.equal(own[k], served[prefix + k])]
    print(name, "loaded", len(same), "of", len(own), backbone.load_report["source"])
"""
    for name, state in weights.items():
        (tmp_path / f"{name}.safetensors").write_bytes(save(state))
    offline = vfm(tmp_path, "-c", script, str(tmp_path), HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stdout + offline.stderr
    out = offline.stdout
    assert "inputs (offline (HF_HUB_OFFLINE=1))" in out and "all present: the trials need no network" in out
    assert f"hf {TIMM_REPO}" in out and "present: model.safetensors" in out
    assert "present: open_clip_model.safetensors" in out
    for line in out.splitlines():
        if line.startswith(("hub_vit loaded", "hub_clip loaded")):
            _, _, same, _, total, *_ = line.split()
            assert same == total and int(total) > 0, line
    assert "hub_vit loaded" in out and "hub_clip loaded" in out


@pytest.mark.slow
def test_a_repo_without_safetensors_falls_back_to_the_pickled_file_as_timm_does(
    local_server: LocalServer, tmp_path: Path
) -> None:
    """timm tries `model.safetensors` then `pytorch_model.bin`; fetch tries them in the same order."""
    state = random_weights(hub_entries()["hub_vit"])
    buf = tmp_path / "weights.bin"
    torch.save(state, buf)
    local_server.serve_hub_file(TIMM_REPO, "pytorch_model.bin", buf.read_bytes())
    done = vfm(
        tmp_path,
        "-m",
        "vfm_ablate",
        "fetch",
        "--weights-only",
        str(write_sweep(tmp_path / "hub.yaml")),
        HF_ENDPOINT=local_server.url,
    )
    tried = [r[1].rsplit("/", 1)[-1] for r in local_server.requests if TIMM_REPO in r[1]]
    assert tried[0] == "model.safetensors" and "pytorch_model.bin" in tried[1:]
    row = next(line for line in done.stdout.splitlines() if line.startswith("weights  hub_vit "))  # fetch's table
    assert "downloaded" in row and row.endswith("pytorch_model.bin")
    # the open_clip repo serves nothing here: its failure is reported, naming the repo, and fetch exits non-zero
    assert done.returncode == 2 and f"could not fetch weights from hf {CLIP_REPO}" in done.stderr
