"""What used to run and give a wrong result, hang or end in a traceback (issue 20), refused before anything runs.

Each case runs the CLI in this process, like test_bad_inputs.py, and must end with a non-zero exit, no traceback, one
message naming the file, key or value and what was expected, nothing left behind, Ray never started. The cases that
need a real server, a real subprocess or a trial (stalling MLflow, signals, a diverging trial) follow, marked slow.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.sweep_helpers import TINY_DATA, TINY_FACTS, tiny_base
from tests.test_bad_inputs import _running_runs, _tree, closed_port, folder_dataset, folder_entry, sweep_file
from vfm_ablate.cli import main

ray = pytest.importorskip("ray")

Case = Callable[[Path], tuple[list[str], list[str]]]
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


def trial_file(tmp: Path, **settings: object) -> str:
    data = {**tiny_base({"max_epochs": 1}), "datasets": {"sa": TINY_DATA}, **settings}
    path = tmp / "trial.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def label_map(root: Path) -> Path:
    """A folder dataset whose masks are a multi-label map: membrane = 128, mitochondria = 255, in regions."""
    for i in range(4):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(np.full((32, 32), 60 + i, np.uint8)).save(root / "images" / f"{i:02d}.png")
        mask = np.zeros((32, 32), np.uint8)
        mask[4:12, :] = 128
        mask[16:24, 8:24] = 255
        Image.fromarray(mask).save(root / "masks" / f"{i:02d}.png")
    return root


# ------------------------------------------------------------------------------------------------ silent results


@case
def builtin_lucchi_pp_never_reads_the_subset(tmp: Path):
    (tmp / "data" / "lucchi_pp_subset" / "Train_In").mkdir(parents=True)
    base = tiny_base({"max_epochs": 1})
    base["data"] = {"train": ["lucchi_pp"]}
    return ["run", sweep_file(tmp, base=base), "--dry-run"], [
        f"{tmp / 'data' / 'lucchi_pp'}: dataset 'lucchi_pp' folder not found",
        "the dataset 'lucchi_pp_subset'",
    ]


@case
def inline_dataset_shadows_builtin(tmp: Path):
    datasets = {"sa": TINY_DATA, "synthetic_b": {**TINY_DATA, "domain": "a"}}
    return ["run", sweep_file(tmp, datasets=datasets), "--dry-run"], [
        "datasets.synthetic_b: 'synthetic_b' is a built-in dataset",
        "give it a name of its own",
    ]


@case
def inline_dataset_named_like_a_real_one(tmp: Path):
    return ["run", sweep_file(tmp, datasets={"sa": TINY_DATA, "vnc": TINY_DATA}), "--dry-run"], [
        "datasets.vnc: 'vnc' is a built-in dataset"
    ]


@case
def inline_backbone_shadows_builtin(tmp: Path):
    base = tiny_base({"max_epochs": 1}, backbone="tiny_vit_p16")
    return ["run", sweep_file(tmp, base=base, backbones={"tiny_vit_p16": TINY_FACTS}), "--dry-run"], [
        "backbones.tiny_vit_p16: 'tiny_vit_p16' is a built-in backbone"
    ]


@case
def check_label_map_read_as_mask(tmp: Path):
    root = label_map(tmp / "labels")
    return ["data", "check", str(root)], [
        f"{root / 'masks' / '00.png'}: looks like a label map",
        "128 (",
        "mask_labels",
    ]


@case
def dry_target_that_is_also_a_train_dataset(tmp: Path):
    """Without an alignment method data.target is unused, and was dropped without a word; a dataset named as both
    labelled source and unlabelled target is a contradiction whatever the alignment."""
    base = tiny_base({"max_epochs": 1})
    base["data"] = {"train": ["sa"], "target": ["sa"]}
    return ["run", sweep_file(tmp, base=base), "--dry-run"], ["data.target ['sa'] is also in data.train"]


@case
def dry_split_seed_axis_with_repeats(tmp: Path):
    return ["run", sweep_file(tmp, axes={"split_seed": [0, 1]}, repeats=2), "--dry-run"], [
        "'split_seed' axis and repeats: 2",
        "overlap",
    ]


@case
def dry_empty_test_list(tmp: Path):
    base = tiny_base({"max_epochs": 1})
    base["data"] = {"train": ["sa"], "test": []}
    return ["run", sweep_file(tmp, base=base), "--dry-run"], ["data.test", "an empty test list"]


@case
def dry_duplicate_key(tmp: Path):
    path = tmp / "dup.yaml"
    path.write_text(Path(sweep_file(tmp)).read_text() + "repeats: 2\nrepeats: 3\n")
    return ["run", str(path), "--dry-run"], ["dup.yaml: line", "duplicate key 'repeats' (first at line"]


@case
def dry_two_axes_sections(tmp: Path):
    path = tmp / "two.yaml"
    text = Path(sweep_file(tmp)).read_text()
    path.write_text(text + "axes:\n  regime: [frozen]\naxes:\n  regime: [lora]\n")
    lines = path.read_text().splitlines()
    first = lines.index("axes:") + 1
    return ["run", str(path), "--dry-run"], [f"line {first + 2}: duplicate key 'axes' (first at line {first})"]


@case
def train_set_duplicate_key(tmp: Path):
    return ["train", "--config", trial_file(tmp), "--set", "optim={lr: 1, lr: 2}"], [
        "override 'optim={lr: 1, lr: 2}': line 1: duplicate key 'lr'"
    ]


@case
def dry_dataset_name_with_emoji(tmp: Path):
    return ["run", sweep_file(tmp, datasets={"sa": TINY_DATA, "mito🧪": TINY_DATA}), "--dry-run"], [
        "datasets.'mito🧪': not a usable dataset name",
        "MLflow",
    ]


@case
def dry_dataset_name_with_path(tmp: Path):
    return ["run", sweep_file(tmp, datasets={"sa": TINY_DATA, "../evil/x": TINY_DATA}), "--dry-run"], [
        "datasets.'../evil/x': not a usable dataset name"
    ]


@case
def dry_dataset_name_too_long(tmp: Path):
    return ["run", sweep_file(tmp, datasets={"sa": TINY_DATA, "m" * 300: TINY_DATA}), "--dry-run"], [
        "300 characters; at most 64"
    ]


@case
def dry_backbone_name_with_space(tmp: Path):
    return ["run", sweep_file(tmp, backbones={"my vit": TINY_FACTS}), "--dry-run"], [
        "backbones.'my vit': not a usable backbone name"
    ]


@case
def train_out_holds_another_trial(tmp: Path):
    (tmp / "out").mkdir()
    (tmp / "out" / "config.yaml").write_text(yaml.safe_dump({"trial_id": "0123456789ab", "trial": {}}))
    (tmp / "out" / "metrics.json").write_text("{}")
    return ["train", "--config", trial_file(tmp), "--out", str(tmp / "out")], [
        f"--out {tmp / 'out'} holds the outputs of another trial (trial 0123456789ab: metrics.json, config.yaml)",
        "--overwrite",
    ]


@case
def dry_gpus_and_cluster(tmp: Path):
    (tmp / "cluster.yaml").write_text("cluster_name: x\n")
    return ["run", sweep_file(tmp), "--dry-run", "--gpus", "2", "--cluster", str(tmp / "cluster.yaml")], [
        "argument --cluster: not allowed with argument --gpus"
    ]


@case
def dry_gpus_without_calibration(tmp: Path):
    return ["run", sweep_file(tmp), "--dry-run", "--gpus", "2"], ["--gpus shapes the cost estimate", "--calibration"]


@case
def run_num_cpus_with_address(tmp: Path):
    return ["run", sweep_file(tmp), "--num-cpus", "2", "--address", "auto"], ["--num-cpus", "with --address"]


@case
def dry_fixed_resize_zero(tmp: Path):
    base = tiny_base({"max_epochs": 1})
    base["data"] = {"train": ["sa"], "resize": {"policy": "fixed", "size": [0, 0]}}
    return ["run", sweep_file(tmp, base=base), "--dry-run"], ["resize.size [0, 0]: each side must be between 1"]


@case
def dry_fixed_resize_not_a_patch_multiple(tmp: Path):
    base = tiny_base({"max_epochs": 1})
    base["data"] = {"train": ["sa"], "resize": {"policy": "fixed", "size": [15, 15]}}
    return ["run", sweep_file(tmp, base=base), "--dry-run"], [
        "dataset 'sa' (32x32 images) with backbone 'tiny_vit_p14' (patch 14)",
        "resize.size [15, 15] must be positive multiples of the backbone's patch size 14",
    ]


def one_train_image(tmp: Path) -> Path:
    root = folder_dataset(tmp)
    for name in ("001.png", "002.png"):
        (root / "train" / "images" / name).unlink()
        (root / "train" / "masks" / name).unlink()
    return root


@case
def check_one_training_image(tmp: Path):
    return ["data", "check", str(one_train_image(tmp))], ["has 1 training slice(s)", "at least 2"]


@case
def dry_one_training_image(tmp: Path):
    path = sweep_file(tmp, datasets={"sa": folder_entry(one_train_image(tmp))})
    return ["run", path, "--dry-run"], ["dataset 'sa' has 1 training slice(s)", "held out for validation"]


# ------------------------------------------------------------------------------------------------ hangs


@case
def run_infeasible_cpu_ask(tmp: Path):
    path = sweep_file(tmp, resources={"cpu": 4}, run={"num_cpus": 1})
    return ["run", path], ["1 trial(s) ask for 4 CPU, 0 GPU", "the local Ray holds 1 CPUs", "wait forever"]


@case
def dry_huge_grid(tmp: Path):
    axes = {"optim.lr": [i / 1e4 for i in range(1, 101)], "optim.patience": list(range(1, 101)), "seed": [0, 1]}
    return ["run", sweep_file(tmp, axes=axes), "--dry-run"], [
        "the axes expand to 20,000 combinations (grid 100 x 100 x 2)",
        "more than run.max_trials (10,000)",
        "max_trials: 20000",
    ]


@case
def run_address_refused(tmp: Path):
    port = closed_port()
    return ["run", sweep_file(tmp), "--address", f"127.0.0.1:{port}"], [
        f"--address 127.0.0.1:{port}: nothing answers at 127.0.0.1:{port}"
    ]


@case
def run_client_address_refused(tmp: Path):
    port = closed_port()
    return ["run", sweep_file(tmp), "--address", f"ray://127.0.0.1:{port}"], ["nothing answers at 127.0.0.1"]


# ------------------------------------------------------------------------------------------------ tracebacks


@case
def dry_axes_empty_list(tmp: Path):
    return ["run", sweep_file(tmp, axes=[]), "--dry-run"], ["axes is an empty list of grids"]


@case
def dry_infinite_lr(tmp: Path):
    path = tmp / "inf.yaml"
    path.write_text(Path(sweep_file(tmp)).read_text().replace("max_epochs: 1", "max_epochs: 1\n    lr: .inf"))
    return ["run", str(path), "--dry-run"], ["optim.lr", "finite number", "inf"]


@case
def dry_nan_axis_value(tmp: Path):
    path = tmp / "nan.yaml"
    path.write_text(Path(sweep_file(tmp)).read_text() + "axes:\n  alignment.loss_weight: [.nan]\n")
    return ["run", str(path), "--dry-run"], ["alignment.loss_weight", "finite number"]


@case
def dry_infinite_cpu(tmp: Path):
    path = tmp / "cpu.yaml"
    path.write_text(Path(sweep_file(tmp)).read_text() + "resources:\n  cpu: .inf\n")
    return ["run", str(path), "--dry-run"], ["resources.cpu", "finite number"]


@case
def dry_negative_seed(tmp: Path):
    return ["run", sweep_file(tmp, axes={"seed": [-1]}), "--dry-run"], ["seed: Input should be greater than or equal"]


@case
def train_out_under_a_file(tmp: Path):
    (tmp / "taken").write_text("a file")
    return ["train", "--config", trial_file(tmp), "--out", str(tmp / "taken" / "out")], [
        f"--out {tmp / 'taken' / 'out'}: {tmp / 'taken'} is a file, not a folder"
    ]


@case
def train_out_in_proc(tmp: Path):
    return ["train", "--config", trial_file(tmp), "--out", "/proc/vfm_out"], [
        "--out /proc/vfm_out: cannot create or write it"
    ]


@case
def train_out_is_a_file(tmp: Path):
    (tmp / "out.txt").write_text("x")
    return ["train", "--config", trial_file(tmp), "--out", str(tmp / "out.txt")], [
        "out.txt: is a file; expected a folder"
    ]


@case
def synth_out_under_a_file(tmp: Path):
    (tmp / "taken").write_text("a file")
    return ["data", "synth", str(tmp / "taken" / "d")], [f"OUT_DIR {tmp / 'taken' / 'd'}: {tmp / 'taken'} is a file"]


@case
def synth_out_in_proc(tmp: Path):
    return ["data", "synth", "/proc/vfm_synth"], ["OUT_DIR /proc/vfm_synth: cannot create or write it"]


@case
def synth_out_is_a_file(tmp: Path):
    (tmp / "d").write_text("x")
    return ["data", "synth", str(tmp / "d")], [f"OUT_DIR {tmp / 'd'}: is a file"]


@case
def synth_huge_size(tmp: Path):
    return ["data", "synth", str(tmp / "d"), "--size", "100000", "100000"], ["--size must be 16..4096"]


@case
def calibrate_out_under_a_file(tmp: Path):
    (tmp / "taken").write_text("a file")
    return ["calibrate", sweep_file(tmp), "-o", str(tmp / "taken" / "cal.json")], [f"{tmp / 'taken'} is a file"]


@case
def calibrate_out_in_proc(tmp: Path):
    return ["calibrate", sweep_file(tmp), "-o", "/proc/vfm/cal.json"], [
        "-o/--out /proc/vfm/cal.json: cannot create or write"
    ]


@case
def calibrate_out_is_a_folder(tmp: Path):
    (tmp / "cal").mkdir()
    return ["calibrate", sweep_file(tmp), "-o", str(tmp / "cal")], ["cal: is a folder; expected a file name"]


@case
def run_tracking_uri_plain_path(tmp: Path):
    return ["run", sweep_file(tmp), "--tracking-uri", str(tmp / "mlruns")], [
        "--tracking-uri", "a plain path or file:// URI", "sqlite:///"
    ]  # fmt: skip


@case
def run_tracking_uri_file_scheme(tmp: Path):
    return ["run", sweep_file(tmp), "--dry-run", "--tracking-uri", f"file://{tmp}/mlruns"], ["file:// URI"]


@case
def run_tracking_uri_unknown_scheme(tmp: Path):
    return ["run", sweep_file(tmp), "--tracking-uri", "foo://bar"], ["--tracking-uri 'foo://bar': unknown scheme"]


@case
def dry_sweep_tracking_uri_plain_path(tmp: Path):
    return ["run", sweep_file(tmp, tracking={"uri": "mlruns"}), "--dry-run"], ["tracking.uri", "a plain path"]


@case
def report_tracking_uri_unknown_scheme(tmp: Path):
    return ["report", "demo", "--tracking-uri", "foo://bar"], ["unknown scheme 'foo'"]


@case
def report_env_tracking_uri_plain_path(tmp: Path):
    os.environ["MLFLOW_TRACKING_URI"] = str(tmp / "mlruns")  # the runner's monkeypatch restores it
    return ["report", "demo"], ["$MLFLOW_TRACKING_URI", "a plain path"]


@case
def run_num_cpus_negative(tmp: Path):
    return ["run", sweep_file(tmp), "--num-cpus", "-1"], ["argument --num-cpus: must be at least 1, got -1"]


@case
def run_num_cpus_zero(tmp: Path):
    return ["run", sweep_file(tmp), "--num-cpus", "0"], ["argument --num-cpus: must be at least 1, got 0"]


@case
def check_negative_split_seed(tmp: Path):
    return ["data", "check", "synthetic_a", "--split-seed", "-3"], ["argument --split-seed: must be between 0 and"]


def storage_with_manifest(tmp: Path, path: str) -> Path:
    from vfm_ablate.sweep.plan import load_plan
    from vfm_ablate.sweep.resume.manifest import sweep_id

    the_plan = load_plan(path)
    root = tmp / "storage" / "s"
    root.mkdir(parents=True)
    ids = [t.trial_id for t in the_plan.trials]
    manifest = {"name": "s", "sweep_id": sweep_id(the_plan), "execution_id": "e1", "trial_ids": ids, "source": path}
    (root / "sweep.json").write_text(json.dumps(manifest))
    return root


@case
def resume_truncated_manifest(tmp: Path):
    path = sweep_file(tmp)
    root = storage_with_manifest(tmp, path)
    (root / "sweep.json").write_text((root / "sweep.json").read_text()[:30])
    return ["run", path, "--resume", "--storage-path", str(tmp / "storage")], [
        f"{root}/sweep.json: a damaged record, not valid JSON",
        "move it aside",
    ]


@case
def resume_truncated_result(tmp: Path):
    path = sweep_file(tmp)
    root = storage_with_manifest(tmp, path)
    tid = json.loads((root / "sweep.json").read_text())["trial_ids"][0]
    (root / "trials" / tid).mkdir(parents=True)
    (root / "trials" / tid / "result.json").write_text('{"status": "TERMINATED", "metr')
    return ["run", path, "--resume", "--storage-path", str(tmp / "storage")], [
        f"{root}/trials/{tid}/result.json: a damaged record",
        f"delete it and run --resume again; trial {tid} then runs again",
    ]


@case
def check_image_smaller_than_a_patch(tmp: Path):
    root = folder_dataset(tmp)
    for folder in ("images", "masks"):
        Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "train" / folder / "001.png")
    return ["data", "check", str(root)], ["001.png: image is 10x12, smaller than one patch"]


@case
def dry_native_resize_gives_one_patch(tmp: Path):
    base = tiny_base({"max_epochs": 1})  # native resize: 20 px images snap to one 14-px patch
    path = sweep_file(tmp, base=base, datasets={"sa": {**TINY_DATA, "size": [20, 20]}})
    return ["run", path, "--dry-run"], ["makes 14x14 input, a 1x1 grid of patches", "at least 2x2"]


@case
def train_small_resize_target(tmp: Path):
    path = trial_file(tmp, data={"train": ["sa"], "resize": {"policy": "longest_edge", "target": 20}})
    return ["train", "--config", path, "--out", str(tmp / "o")], ["a 1x1 grid of patches"]


# ------------------------------------------------------------------------------------------------ found by Hypothesis
# (tests/test_property_inputs.py: each counter-example it found stays here as a fixed case)


@case
def dry_base_seed_null(tmp: Path):
    return ["run", sweep_file(tmp, base={**tiny_base({"max_epochs": 1}), "seed": None}), "--dry-run"], [
        "base.seed must be a whole number (repeats count up from it), got None"
    ]


@case
def dry_base_split_seed_fraction(tmp: Path):
    base = {**tiny_base({"max_epochs": 1}), "split_seed": 1.5}
    return ["run", sweep_file(tmp, base=base, repeats=2), "--dry-run"], ["base.split_seed must be a whole number"]


# ------------------------------------------------------------------------------------------------ found by the probe
# (a probe of 144 other bad inputs, run against this branch: each case it found unclear or accepted stays here)


@case
def dry_dropped_setting_misspelt(tmp: Path):
    base = tiny_base({"max_epochs": 1})
    base["data"] = {"train": ["sa"], "sampling": "balance"}  # dropped for one dataset, but still a typo
    return ["run", sweep_file(tmp, base=base), "--dry-run"], [
        "[data, which does not apply to this trial]",
        "Did you mean 'balanced'?",
    ]


@case
def dry_dropped_weights_without_weighted(tmp: Path):
    base = tiny_base({"max_epochs": 1})
    base["data"] = {"train": ["sa"], "weights": [1.0]}  # sampling natural: the weights contradict it
    return ["run", sweep_file(tmp, base=base), "--dry-run"], [
        "[data, which does not apply to this trial]",
        "'weights' is only used with sampling: weighted",
    ]


@case
def dry_dropped_lora_section_invalid(tmp: Path):
    base = {**tiny_base({"max_epochs": 1}), "lora": {"rank": 0}}
    return ["run", sweep_file(tmp, base=base), "--dry-run"], ["[lora, which does not apply to this trial]", "rank"]


@case
def dry_negative_gpu(tmp: Path):
    return ["run", sweep_file(tmp, resources={"gpu": -1}), "--dry-run"], ["resources.gpu", "greater than or equal"]


@case
def dry_empty_experiment_name(tmp: Path):
    return ["run", sweep_file(tmp, tracking={"experiment": ""}), "--dry-run"], ["tracking.experiment"]


@case
def run_retry_failed_without_resume(tmp: Path):
    return ["run", sweep_file(tmp), "--retry-failed"], ["--retry-failed goes with --resume"]


@case
def run_empty_address(tmp: Path):
    return ["run", sweep_file(tmp), "--address", ""], ["--address is empty"]


@case
def report_empty_tracking_uri(tmp: Path):
    return ["report", "demo", "--tracking-uri", ""], ["--tracking-uri '': empty"]


@case
def train_override_empty_key(tmp: Path):
    return ["train", "--config", trial_file(tmp), "--set", "=5"], ["override '=5': '' is not a dotted key"]


@case
def check_colour_label_map(tmp: Path):
    root = folder_dataset(tmp)
    mask = np.zeros((32, 32, 3), np.uint8)
    mask[:10, :, 0] = 255  # class 1 red, class 2 green
    mask[20:, :, 1] = 255
    Image.fromarray(mask).save(root / "train" / "masks" / "000.png")
    return ["data", "check", str(root)], [
        f"{root / 'train' / 'masks' / '000.png'}: looks like a label map",
        "(0, 255, 0)",
        "save it with one channel",
    ]


# ------------------------------------------------------------------------------------------------ the runner


def test_the_issue_is_covered() -> None:
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", sorted(CASES))
def test_refused(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VFM_ABLATE_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # restored afterwards, whatever a case sets
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("VFM_ABLATE_STORAGE_PATH", raising=False)
    argv, expected = CASES[name](tmp_path)
    capsys.readouterr()
    before = _tree(tmp_path)
    start = time.monotonic()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    took = time.monotonic() - start
    out, err = capsys.readouterr()
    text = out + err
    assert code == 2, text
    assert "Traceback" not in text, text
    assert len([line for line in err.splitlines() if "error:" in line]) == 1, err
    for part in expected:
        assert part in text, f"expected {part!r} in:\n{text}"
    assert took < 30, took
    assert not ray.is_initialized()
    assert _tree(tmp_path) == before, f"left behind: {sorted(_tree(tmp_path) - before)}"
    assert _running_runs(tmp_path) == []


# ------------------------------------------------------------------------------------------------ not refused


def test_dry_run_says_which_trials_this_machines_ray_could_not_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", sweep_file(tmp_path, resources={"cpu": 4}, run={"num_cpus": 1}), "--dry-run"]) == 0
    assert "note: 1 trial(s) ask for 4 CPU, 0 GPU" in capsys.readouterr().out


def test_a_grid_above_the_limit_runs_when_the_sweep_file_raises_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    axes = {"optim.lr": [i / 1e4 for i in range(1, 21)], "seed": list(range(11))}
    path = sweep_file(tmp_path, axes=axes, run={"num_cpus": 1, "max_trials": 220})
    assert main(["run", path, "--dry-run"]) == 0
    assert "220 trials (220 combinations" in capsys.readouterr().out


def test_an_inline_entry_with_a_builtins_very_facts_is_not_a_shadow(tmp_path: Path) -> None:
    from vfm_ablate.models.registry import get_entry
    from vfm_ablate.sweep.plan import load_plan

    facts = get_entry("tiny_vit_p16").model_dump(mode="json", exclude={"name"})
    path = sweep_file(
        tmp_path, base=tiny_base({"max_epochs": 1}, backbone="tiny_vit_p16"), backbones={"tiny_vit_p16": facts}
    )
    assert load_plan(path).backbones["tiny_vit_p16"] == get_entry("tiny_vit_p16")


def test_the_label_map_is_read_once_its_labels_are_named(tmp_path: Path) -> None:
    from vfm_ablate.data.check import check_dataset, detect_entry

    root = label_map(tmp_path / "labels")
    report = check_dataset(detect_entry(root, options={"mask_labels": [255]}))
    assert report.ok, report.problems
    assert all(s.foreground == pytest.approx(128 / 1024) for s in report.slices if s.split != "unlabelled")


# ------------------------------------------------------------------------------------------------ the real thing


@pytest.fixture
def silent_port() -> Iterator[tuple[socket.socket, int]]:
    """A port that accepts TCP connections but never answers (a hung service)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock, int(sock.getsockname()[1])


@pytest.mark.slow  # waits out the 10 s deadline by design
def test_an_address_that_accepts_but_never_answers_fails_in_seconds(
    silent_port: tuple[socket.socket, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    port = silent_port[1]
    start = time.monotonic()
    assert main(["run", sweep_file(tmp_path), "--address", f"127.0.0.1:{port}"]) == 2
    assert time.monotonic() - start < 30 and not ray.is_initialized()
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port} accepts connections but did not answer within 10 s as a Ray cluster does" in err


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_waiting_on_an_address_obeys_ctrl_c_and_sigterm(
    signal_name: str, silent_port: tuple[socket.socket, int], tmp_path: Path
) -> None:
    import signal

    sock, port = silent_port
    path = sweep_file(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vfm_ablate", "run", path, "--address", f"127.0.0.1:{port}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    try:
        sock.settimeout(120)
        conn, _ = sock.accept()  # the command reached the address: it now waits for an answer
        conn.settimeout(120)
        conn.recv(24)  # its greeting arrived: it waits in the handshake
        sent = time.monotonic()
        proc.send_signal(getattr(signal, signal_name))
        proc.wait(timeout=10)
        assert time.monotonic() - sent < 5
        assert proc.returncode == (130 if signal_name == "SIGINT" else -signal.SIGTERM)
        conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class StallingProxy:
    """A TCP proxy on 127.0.0.1 in front of a real MLflow server: it forwards the first `forwarded` connections (the
    pre-flight's requests) and then accepts connections and never answers (a server that stalls mid-command)."""

    def __init__(self, target_port: int, forwarded: int) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.target, self.left = target_port, forwarded
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.left <= 0:
                self.held.append(conn)  # stalls: read nothing, answer nothing
                continue
            self.left -= 1
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.mark.slow(seconds=35)
def test_report_against_a_server_that_stalls_after_the_preflight_ends_in_seconds(
    mlflow_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in (
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    ):
        monkeypatch.delenv(name, raising=False)  # the tool's own deadlines
    monkeypatch.chdir(tmp_path)
    proxy = StallingProxy(mlflow_server.port, forwarded=2)  # /health and the credentials check
    try:
        uri = f"http://127.0.0.1:{proxy.port}"
        start = time.monotonic()
        code = main(["report", "some_experiment", "--tracking-uri", uri])
        took = time.monotonic() - start
    finally:
        proxy.close()
    err = capsys.readouterr().err
    assert code == 2 and took < 30, (took, err)
    assert f"MLflow tracking server {uri} did not answer get_experiment_by_name (timed out" in err
    assert "Traceback" not in err


def test_a_tracking_call_without_an_answer_is_an_error_naming_server_and_call(
    silent_port: tuple[socket.socket, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from vfm_ablate.errors import VfmAblateError
    from vfm_ablate.tracking import store

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")  # the same path as the tool's own limits, in seconds
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    uri = f"http://127.0.0.1:{silent_port[1]}"
    monkeypatch.setattr(store, "_CLIENTS", {})
    start = time.monotonic()
    with pytest.raises(VfmAblateError, match=rf"MLflow tracking server {uri} did not answer search_experiments \("):
        store.tracking_client(uri).search_experiments()
    assert time.monotonic() - start < 15


@pytest.mark.slow
def test_a_diverging_trial_ends_with_its_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = trial_file(tmp_path, optim={"max_epochs": 2, "lr": 1e30})
    assert main(["train", "--config", path, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "error: training diverged: loss became nan at epoch 0 (optim.lr=1e+30); lower optim.lr" in err, err


@pytest.mark.slow
def test_train_replaces_another_trials_outputs_only_with_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "o")
    first = trial_file(tmp_path, num_overlays=1)
    assert main(["train", "--config", first, "--out", out]) == 0
    assert main(["train", "--config", first, "--out", out]) == 0  # the same trial again: its own outputs
    second = trial_file(tmp_path, num_overlays=0, optim={"max_epochs": 1, "lr": 2e-4})
    assert main(["train", "--config", second, "--out", out]) == 2
    assert "holds the outputs of another trial" in capsys.readouterr().err
    assert main(["train", "--config", second, "--out", out, "--overwrite"]) == 0
    config = yaml.safe_load((tmp_path / "o" / "config.yaml").read_text())
    assert config["trial"]["optim"]["lr"] == 2e-4
    assert not (tmp_path / "o" / "overlays").exists()  # the first trial's overlays went with it
