"""Bad input, as a new user gives it, to every command: `run`, `run --dry-run`, `train`, `report`, `diagnose` and
`data check`. Each case runs the CLI in this process and must end with a non-zero exit, no traceback, a message
naming the offending file, key or value, and nothing left behind: no file or folder created, no Ray started, no
MLflow run left RUNNING. Every case fails before Ray or a trial starts, so the whole suite takes seconds.

(Unreachable tracking servers, with their time limit: test_fail_fast.py.)
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.sweep_helpers import TINY_DATA, TINY_FACTS, tiny_base
from vfm_ablate.cli import main
from vfm_ablate.data.synthetic import write_folder

ray = pytest.importorskip("ray")

# a case: builds its inputs in a fresh folder, returns the command line and the texts its message must hold
Case = Callable[[Path], tuple[list[str], list[str]]]
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


def sweep_file(tmp: Path, name: str = "s", **sections: object) -> str:
    data = {
        "name": name,
        "base": tiny_base({"max_epochs": 1}),
        "datasets": {"sa": TINY_DATA},
        "run": {"num_cpus": 1},
        **sections,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def trial_file(tmp: Path, **settings: object) -> str:
    data = {
        "backbone": "tiny_vit_p14",
        "weights": "random",
        "device": "cpu",
        "num_overlays": 0,
        "data": {"train": ["sa"], "resize": {"policy": "native"}},
        "optim": {"max_epochs": 1},
        "datasets": {"sa": TINY_DATA},
        **settings,
    }
    path = tmp / "trial.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def folder_dataset(tmp: Path, name: str = "em") -> Path:
    write_folder(tmp / name, "a", 3, 2, (32, 32), 0)
    return tmp / name


def with_image(root: Path, image: np.ndarray) -> Path:
    """One more train image (and its mask) in a folder dataset."""
    Image.fromarray(image).save(root / "train" / "images" / "099.png")
    Image.fromarray(np.zeros(image.shape[:2], np.uint8)).save(root / "train" / "masks" / "099.png")
    return root


def folder_entry(root: Path) -> dict:
    return {
        "layout": "folder",
        "path": str(root),
        "image_dir": "train/images",
        "mask_dir": "train/masks",
        "test_image_dir": "test/images",
        "test_mask_dir": "test/masks",
    }


def non_utf8(path: Path) -> str:
    path.write_bytes(b"name: x\nbase: \xff\xfe\x80 broken\n")
    return str(path)


# ------------------------------------------------------------------------------------------------ run --dry-run


@case
def dry_missing_file(tmp: Path):
    return ["run", str(tmp / "nope.yaml"), "--dry-run"], ["nope.yaml: file not found"]


@case
def dry_directory(tmp: Path):
    (tmp / "sweeps").mkdir()
    return ["run", str(tmp / "sweeps"), "--dry-run"], ["sweeps: is a directory, expected a YAML file"]


@case
def dry_not_utf8(tmp: Path):
    return ["run", non_utf8(tmp / "g.yaml"), "--dry-run"], ["g.yaml: not UTF-8 text (byte 0xff at offset 14)"]


@case
def dry_not_yaml(tmp: Path):
    (tmp / "b.yaml").write_text("name: [unclosed\n")
    return ["run", str(tmp / "b.yaml"), "--dry-run"], ["b.yaml: not valid YAML"]


@case
def dry_top_level_list(tmp: Path):
    (tmp / "l.yaml").write_text("- a\n- b\n")
    return ["run", str(tmp / "l.yaml"), "--dry-run"], ["l.yaml: expected a mapping"]


@case
def dry_misspelt_section(tmp: Path):
    return ["run", sweep_file(tmp, axis={"regime": ["frozen"]}), "--dry-run"], ["'axis'", "Did you mean 'axes'?"]


@case
def dry_unknown_backbone(tmp: Path):
    base = tiny_base({"max_epochs": 1}, backbone="tiny_vit_p15")
    return ["run", sweep_file(tmp, base=base), "--dry-run"], ["unknown backbone 'tiny_vit_p15'", "tiny_vit_p14"]


@case
def dry_unknown_dataset(tmp: Path):
    return ["run", sweep_file(tmp, axes={"data.train": [["sb"]]}), "--dry-run"], ["unknown dataset 'sb'"]


@case
def dry_unknown_axis_key(tmp: Path):
    path = sweep_file(tmp, axes={"optim.lrr": [1e-3]})
    return ["run", path, "--dry-run"], ["optim.lrr", "Did you mean 'lr'?"]


@case
def dry_repeats_zero(tmp: Path):
    return ["run", sweep_file(tmp, repeats=0), "--dry-run"], ["repeats", "greater than or equal to 1"]


@case
def dry_balanced_batch(tmp: Path):
    base = tiny_base({"max_epochs": 1, "batch_size": 3})
    base["data"] = {"train": ["sa", "sb"], "sampling": "balanced"}
    path = sweep_file(tmp, base=base, datasets={"sa": TINY_DATA, "sb": TINY_DATA})
    return ["run", path, "--dry-run"], ["optim.batch_size must be a multiple of 2, got 3"]


@case
def dry_weighted_without_weights(tmp: Path):
    base = tiny_base({"max_epochs": 1})
    base["data"] = {"train": ["sa", "sb"], "sampling": "weighted"}
    path = sweep_file(tmp, base=base, datasets={"sa": TINY_DATA, "sb": TINY_DATA})
    return ["run", path, "--dry-run"], ["sampling 'weighted' needs 'weights'"]


@case
def dry_override_unknown_backbone(tmp: Path):
    path = sweep_file(tmp, resources={"overrides": [{"backbone": "tiny_vit", "gpu": 1}]})
    return ["run", path, "--dry-run"], ["resources.overrides[0]", "unknown backbone 'tiny_vit'"]


@case
def dry_search_key_on_axis(tmp: Path):
    path = sweep_file(
        tmp, axes={"optim.lr": [1e-3]}, search={"num_samples": 2, "space": {"optim.lr": {"uniform": [0, 1]}}}
    )
    return ["run", path, "--dry-run"], ["'optim.lr' is both a grid axis and a search.space key"]


@case
def dry_inline_dataset_path_missing(tmp: Path):
    path = sweep_file(tmp, datasets={"sa": {"layout": "folder", "path": str(tmp / "no_such_data")}})
    return ["run", path, "--dry-run"], ["dataset 'sa'", f"{tmp / 'no_such_data'}: dataset 'sa' folder not found"]


@case
def dry_dataset_image_without_mask(tmp: Path):
    root = folder_dataset(tmp)
    (root / "train" / "masks" / "001.png").unlink()
    path = sweep_file(tmp, datasets={"sa": folder_entry(root)})
    return ["run", path, "--dry-run"], [f"{root / 'train' / 'images' / '001.png'}: no mask with stem '001'"]


@case
def dry_builtin_data_root_empty(tmp: Path):
    (tmp / "data").mkdir()
    base = tiny_base({"max_epochs": 1})
    base["data"] = {"train": ["vnc"]}
    path = sweep_file(tmp, base=base)
    return ["run", path, "--dry-run"], [
        f"{tmp / 'data' / 'vnc'}: dataset 'vnc' folder not found",
        "VFM_ABLATE_DATA_ROOT",
    ]


@case
def dry_checkpoint_missing(tmp: Path):
    base = tiny_base({"max_epochs": 1}, backbone="mine", weights="pretrained")
    backbones = {"mine": {**TINY_FACTS, "checkpoint": str(tmp / "weights.pth")}}
    path = sweep_file(tmp, base=base, backbones=backbones)
    return ["run", path, "--dry-run"], [f"checkpoint file {tmp / 'weights.pth'} not found", "'mine'"]


@case
def dry_embed_dim_contradicts_model(tmp: Path):
    base = tiny_base({"max_epochs": 1}, backbone="mine")
    path = sweep_file(tmp, base=base, backbones={"mine": {**TINY_FACTS, "embed_dim": 64}})
    return ["run", path, "--dry-run"], ["[backbones.mine]", "embed_dim=64", "has 48"]


@case
def dry_patch_size_contradicts_model(tmp: Path):
    base = tiny_base({"max_epochs": 1}, backbone="mine")
    path = sweep_file(tmp, base=base, backbones={"mine": {**TINY_FACTS, "patch_size": 16}})
    return ["run", path, "--dry-run"], ["[backbones.mine]", "patch_size=16", "has 14"]


@case
def dry_prefix_tokens_contradict_model(tmp: Path):
    base = tiny_base({"max_epochs": 1}, backbone="mine")
    path = sweep_file(tmp, base=base, backbones={"mine": {**TINY_FACTS, "num_prefix_tokens": 1}})
    return ["run", path, "--dry-run"], ["[backbones.mine]", "num_prefix_tokens=1", "has 5"]


@case
def dry_unknown_timm_model(tmp: Path):
    base = tiny_base({"max_epochs": 1}, backbone="mine")
    path = sweep_file(tmp, base=base, backbones={"mine": {**TINY_FACTS, "model_id": "vit_smal_patch14_dinov2"}})
    return ["run", path, "--dry-run"], ["unknown timm model 'vit_smal_patch14_dinov2'"]


@case
def dry_dataset_option_for_other_layout(tmp: Path):
    path = sweep_file(tmp, datasets={"sa": {**TINY_DATA, "colour": "luminance"}})
    return ["run", path, "--dry-run"], ["layout 'synthetic' does not take 'colour'"]


# ------------------------------------------------------------------------------------------------ run


@case
def run_unreachable_tracking_server(tmp: Path):
    uri = f"http://127.0.0.1:{closed_port()}"
    return ["run", sweep_file(tmp), "--tracking-uri", uri], [f"MLflow tracking server {uri} is not reachable"]


@case
def run_storage_path_cannot_be_created(tmp: Path):
    (tmp / "taken").write_text("a file")
    return ["run", sweep_file(tmp), "--storage-path", str(tmp / "taken" / "x")], [
        f"storage path {tmp / 'taken' / 'x' / 's'}: {tmp / 'taken'} is a file, not a folder"
    ]


@case
def run_storage_path_in_proc(tmp: Path):
    return ["run", sweep_file(tmp), "--storage-path", "/proc/x"], ["storage path /proc/x/s: cannot create or write it"]


@case
def run_storage_uri_unknown_scheme(tmp: Path):
    return ["run", sweep_file(tmp), "--storage-path", "nosuch://bucket/x"], ["storage path nosuch://bucket/x/s"]


@case
def run_inline_dataset_path_missing(tmp: Path):
    path = sweep_file(tmp, datasets={"sa": {"layout": "folder", "path": "missing_data"}})
    return ["run", path], [f"{tmp / 'missing_data'}: dataset 'sa' folder not found"]


@case
def run_checkpoint_missing(tmp: Path):
    base = tiny_base({"max_epochs": 1}, backbone="mine", weights="pretrained")
    path = sweep_file(tmp, base=base, backbones={"mine": {**TINY_FACTS, "checkpoint": "w/missing.pth"}})
    return ["run", path], [f"checkpoint file {tmp / 'w' / 'missing.pth'} not found"]


@case
def run_max_concurrent_zero(tmp: Path):
    return ["run", sweep_file(tmp), "--max-concurrent-trials", "0"], [
        "--max-concurrent-trials: must be at least 1, got 0"
    ]


@case
def run_rerun_changed_without_resume(tmp: Path):
    return ["run", sweep_file(tmp), "--rerun-changed"], ["--rerun-changed goes with --resume"]


# ------------------------------------------------------------------------------------------------ train


@case
def train_config_missing(tmp: Path):
    return ["train", "--config", str(tmp / "t.yaml")], ["t.yaml: file not found"]


@case
def train_config_directory(tmp: Path):
    return ["train", "--config", str(tmp)], [f"{tmp}: is a directory"]


@case
def train_config_not_utf8(tmp: Path):
    return ["train", "--config", non_utf8(tmp / "t.yaml")], ["t.yaml: not UTF-8 text"]


@case
def train_config_is_a_list(tmp: Path):
    (tmp / "t.yaml").write_text("- backbone\n")
    return ["train", "--config", str(tmp / "t.yaml")], ["t.yaml: expected a mapping of trial settings"]


@case
def train_misspelt_key(tmp: Path):
    return ["train", "--config", trial_file(tmp, regim="lora")], ["'regim'", "Did you mean 'regime'?"]


@case
def train_unknown_backbone_flag(tmp: Path):
    return ["train", "--config", trial_file(tmp), "--backbone", "dinov2_vits14_regg"], [
        "unknown backbone 'dinov2_vits14_regg'",
        "dinov2_vits14_reg",
    ]


@case
def train_unknown_dataset_flag(tmp: Path):
    return ["train", "--config", trial_file(tmp), "--train", "lucchi"], ["unknown dataset 'lucchi'"]


@case
def train_bad_override(tmp: Path):
    return ["train", "--config", trial_file(tmp), "--set", "optim.lr"], ["override 'optim.lr': expected KEY=VALUE"]


@case
def train_bad_regime_choice(tmp: Path):
    return ["train", "--config", trial_file(tmp), "--regime", "lorra"], ["--regime: invalid choice: 'lorra'"]


@case
def train_dataset_path_missing(tmp: Path):
    path = trial_file(tmp, datasets={"sa": {"layout": "folder", "path": "gone"}})
    return ["train", "--config", path, "--out", str(tmp / "out")], [f"{tmp / 'gone'}: dataset 'sa' folder not found"]


@case
def train_checkpoint_missing(tmp: Path):
    path = trial_file(
        tmp, backbone="mine", weights="pretrained", backbones={"mine": {**TINY_FACTS, "checkpoint": "none.pth"}}
    )
    return ["train", "--config", path, "--out", str(tmp / "out" / "deep")], [f"{tmp / 'none.pth'} not found"]


@case
def train_embed_dim_contradicts_model(tmp: Path):
    path = trial_file(tmp, backbone="mine", backbones={"mine": {**TINY_FACTS, "embed_dim": 96}})
    return ["train", "--config", path, "--out", str(tmp / "out")], ["embed_dim=96", "has 48"]


@case
def train_mixed_bit_depths(tmp: Path):
    root = with_image(folder_dataset(tmp), np.full((32, 32), 3000, np.uint16))
    path = trial_file(tmp, datasets={"sa": folder_entry(root)})
    return ["train", "--config", path, "--out", str(tmp / "out")], ["mixed bit depths", "099.png", "uint16"]


@case
def train_colour_images(tmp: Path):
    root = with_image(folder_dataset(tmp), np.dstack([np.full((32, 32), v, np.uint8) for v in (1, 2, 3)]))
    path = trial_file(tmp, datasets={"sa": folder_entry(root)})
    return ["train", "--config", path, "--out", str(tmp / "out")], ["099.png: a colour image"]


@case
def train_intensity_bits_exceeded(tmp: Path):
    root = folder_dataset(tmp)
    for p in (root / "train" / "images").glob("*.png"):
        Image.fromarray(np.full((32, 32), 300, np.uint16)).save(p)
    for p in (root / "test" / "images").glob("*.png"):
        Image.fromarray(np.full((32, 32), 9000, np.uint16)).save(p)
    entry = {**folder_entry(root), "intensity": {"rule": "bits", "bits": 12}}
    path = trial_file(tmp, datasets={"sa": entry})
    return ["train", "--config", path, "--out", str(tmp / "out")], ["value 9000 exceeds intensity bits 12"]


# ------------------------------------------------------------------------------------------------ report


@case
def report_not_utf8(tmp: Path):
    return ["report", non_utf8(tmp / "r.yaml")], ["r.yaml: not UTF-8 text"]


@case
def report_directory(tmp: Path):
    (tmp / "runs").mkdir()
    return ["report", str(tmp / "runs")], ["runs: is a directory"]


@case
def report_missing_sweep_file(tmp: Path):
    return ["report", str(tmp / "gone.yaml")], ["gone.yaml: file not found"]


@case
def report_unreachable_server(tmp: Path):
    uri = f"http://127.0.0.1:{closed_port()}"
    return ["report", "demo", "--tracking-uri", uri], [f"MLflow tracking server {uri} is not reachable"]


@case
def report_no_database(tmp: Path):
    return ["report", "demo", "--tracking-uri", f"sqlite:///{tmp / 'none.db'}"], [f"no MLflow database at {tmp}"]


@case
def report_invalid_sweep(tmp: Path):
    return ["report", sweep_file(tmp, tracking={"experimnt": "x"})], ["'tracking.experimnt'", "'experiment'"]


# ------------------------------------------------------------------------------------------------ diagnose


@case
def diagnose_entries_not_utf8(tmp: Path):
    args = ["diagnose", "--backbone", "tiny_vit_p14", "--datasets", "synthetic_a", "synthetic_b"]
    return [*args, "--entries", non_utf8(tmp / "e.yaml"), "--out", str(tmp / "o")], ["e.yaml: not UTF-8 text"]


@case
def diagnose_entries_missing(tmp: Path):
    args = ["diagnose", "--backbone", "tiny_vit_p14", "--datasets", "synthetic_a", "synthetic_b"]
    return [*args, "--entries", str(tmp / "e.yaml"), "--out", str(tmp / "o")], ["e.yaml: file not found"]


@case
def diagnose_unknown_backbone(tmp: Path):
    args = ["diagnose", "--backbone", "tiny_vit_p41", "--datasets", "synthetic_a", "synthetic_b"]
    return [*args, "--out", str(tmp / "o")], ["unknown backbone 'tiny_vit_p41'"]


@case
def diagnose_no_datasets(tmp: Path):
    return ["diagnose", "--backbone", "tiny_vit_p14", "--out", str(tmp / "o")], ["--datasets and/or --unlabelled"]


@case
def diagnose_checkpoint_missing(tmp: Path):
    return ["diagnose", "--checkpoint", str(tmp / "c.pt"), "--datasets", "synthetic_a", "--out", str(tmp / "o")], [
        "c.pt: file not found"
    ]


@case
def diagnose_dataset_path_missing(tmp: Path):
    (tmp / "e.yaml").write_text(yaml.safe_dump({"datasets": {"mine": {"layout": "unlabelled", "path": "imgs"}}}))
    args = ["diagnose", "--backbone", "tiny_vit_p14", "--datasets", "synthetic_a", "--unlabelled", "mine"]
    return [*args, "--entries", str(tmp / "e.yaml"), "--out", str(tmp / "o")], [
        f"{tmp / 'imgs'}: dataset 'mine' folder not found"
    ]


@case
def diagnose_pretrained_checkpoint_missing(tmp: Path):
    (tmp / "e.yaml").write_text(yaml.safe_dump({"backbones": {"mine": {**TINY_FACTS, "checkpoint": "w.pth"}}}))
    args = ["diagnose", "--backbone", "mine", "--datasets", "synthetic_a", "synthetic_b"]
    return [*args, "--entries", str(tmp / "e.yaml"), "--out", str(tmp / "o")], [f"{tmp / 'w.pth'} not found"]


# ------------------------------------------------------------------------------------------------ data check


@case
def check_unknown_name(tmp: Path):
    return ["data", "check", "lucchi"], ["'lucchi' is neither an existing path nor a dataset name", "lucchi_pp"]


@case
def check_single_non_tiff_file(tmp: Path):
    (tmp / "notes.txt").write_text("x")
    return ["data", "check", str(tmp / "notes.txt")], ["notes.txt: a single file is checked as a TIFF stack"]


@case
def check_unrecognised_folder(tmp: Path):
    (tmp / "empty").mkdir()
    return ["data", "check", str(tmp / "empty")], ["empty: cannot tell the layout"]


@case
def check_bad_set(tmp: Path):
    return ["data", "check", str(folder_dataset(tmp)), "--set", "mask_dir"], ["--set expects KEY=VALUE", "mask_dir"]


@case
def check_misspelt_option(tmp: Path):
    return ["data", "check", str(folder_dataset(tmp)), "--set", "mask_dirr=x"], ["'mask_dirr'"]


@case
def check_colour_image(tmp: Path):
    root = with_image(folder_dataset(tmp), np.dstack([np.full((32, 32), v, np.uint8) for v in (0, 128, 255)]))
    return ["data", "check", str(root)], [f"{root / 'train' / 'images' / '099.png'}: a colour image"]


@case
def check_mixed_bit_depths(tmp: Path):
    root = with_image(folder_dataset(tmp), np.full((32, 32), 1000, np.uint16))
    return ["data", "check", str(root)], ["mixed bit depths", "uint16 (e.g.", "099.png"]


@case
def check_bad_intensity_rule(tmp: Path):
    return ["data", "check", str(folder_dataset(tmp)), "--set", "intensity={rule: bitz}"], ["intensity.rule", "bitz"]


@case
def check_unreadable_image(tmp: Path):
    root = folder_dataset(tmp)
    (root / "train" / "images" / "000.png").write_bytes(b"\x89PNG truncated")
    return ["data", "check", str(root)], [f"{root / 'train' / 'images' / '000.png'}: unreadable or truncated"]


# ------------------------------------------------------------------------------------------------ the runner


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _running_runs(root: Path) -> list[str]:
    running = []
    for db in root.rglob("*.db"):
        try:
            with sqlite3.connect(db) as con:
                running += [r[0] for r in con.execute("SELECT run_uuid FROM runs WHERE status = 'RUNNING'")]
        except sqlite3.DatabaseError:  # not an MLflow store (or empty)
            pass
    return running


def test_the_suite_is_large_enough() -> None:
    commands = {name.split("_", 1)[0] for name in CASES}
    assert len(CASES) >= 40 and commands == {"dry", "run", "train", "report", "diagnose", "check"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VFM_ABLATE_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("VFM_ABLATE_STORAGE_PATH", raising=False)
    argv, expected = CASES[name](tmp_path)
    capsys.readouterr()
    before = _tree(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    out, err = capsys.readouterr()
    text = out + err
    assert code not in (0, None), text
    assert "Traceback" not in text, text
    for part in expected:
        assert part in text, f"expected {part!r} in:\n{text}"
    assert not ray.is_initialized()
    assert _tree(tmp_path) == before, f"left behind: {sorted(_tree(tmp_path) - before)}"
    assert _running_runs(tmp_path) == []
