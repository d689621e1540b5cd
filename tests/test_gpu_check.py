"""benchmarks/gpu_check.py, the one command a short GPU lease runs, known to work before it meets a GPU: its tiny
CPU configuration end to end (every stage, through the public CLI, within its budget), and its parts: which
carried wheels it installs, how it reads the dry runs, how a stage that runs out of time is stopped."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check_inputs  # noqa: E402
import gpu_check_jobs  # noqa: E402
import gpu_check_read  # noqa: E402
import gpu_check_wheels  # noqa: E402


@pytest.mark.slow(seconds=110)
@pytest.mark.timeout(1200)
def test_the_tiny_configuration_runs_every_stage_and_writes_what_a_lease_brings_back(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    argv = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tiny", "--out", str(out)]
    argv += ["--work", str(work), "--budget", "900"]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=1100)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]

    # at most 8 files come back from the GPU machine
    assert sorted(p.name for p in out.iterdir()) == [
        "calibration.json",
        "dry-runs.txt",
        "log.txt",
        "summary.json",
        "summary.md",
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert {n: s["status"] for n, s in summary["stages"].items()} == {
        "install": "ok",
        "prepare": "ok",
        "trials": "ok",
        "calibrate": "ok",
        "dry runs": "ok",
    }
    prepared, trials = summary["stages"]["prepare"], summary["stages"]["trials"]
    assert prepared["data_check"] == "ok"  # the stand-ins read with the real loaders
    env = prepared["environment"]
    assert env["modules"]["monai"]["version"] and env["modules"]["open_clip"]["version"] and env["import_engine_s"] > 0
    assert trials["bf16_vs_cpu"]["ok"] and trials["fp32_vs_cpu"]["ok"]
    assert set(trials["bf16_vs_cpu"]["delta"]) == {"iou_fg/tiny_a", "iou_fg/tiny_b", "macro_iou_fg", "pooled_iou_fg"}
    reference, bf16 = trials["results"]["cpu_fp32"], trials["results"]["device_bf16"]
    assert bf16["epochs_run"] == reference["epochs_run"] == 4
    assert all(v > 0 for v in reference["metrics"].values())  # it learns something: the comparison is not 0 vs 0

    # the calibration: both regimes in both precisions, one process for the backbone
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["settings"]["isolate"] == "backbone" and cal["notes"] == []
    measured = {(m["key"]["regime"], m["key"]["precision"]) for m in cal["measurements"]}
    assert measured == {("frozen", "fp32"), ("frozen", "bf16"), ("lora", "fp32"), ("lora", "bf16")}
    assert {d["dataset"] for d in cal["datasets"]} == {"lucchi_pp", "vnc"}  # the stand-ins, read by the loaders

    # the dry runs: both study sweeps, fp32 and bf16, each costed in full from the measured file
    figures = summary["stages"]["dry runs"]["figures"]
    assert set(figures) == {f"{s}-{p}-measured" for s in ("main_table", "domain_alignment") for p in ("fp32", "bf16")}
    for f in figures.values():
        assert f["exit_status"] == 0 and f["not_calibrated"] == 0
        assert f["gpu_hours"] is not None and f["makespan"] is not None
        assert list(f["gpu_hours_by_backbone"]) == ["tiny_vit_p16"]
    assert figures["main_table-fp32-measured"]["trials"] == 30  # 1 backbone x 2 regimes x 3 data x 5 repeats
    assert figures["domain_alignment-fp32-measured"]["trials"] == 270
    # the bf16 copy reads the bf16 measurements: its per-trial estimates differ from the fp32 ones (not in a set
    # direction: bf16 autocast is slower than fp32 on some CPUs and faster on others)
    dry = (out / "dry-runs.txt").read_text()
    for sweep in ("main_table", "domain_alignment"):
        tables = {p: estimate_table(dry, f"{sweep}-{p}-measured") for p in ("fp32", "bf16")}
        assert tables["fp32"] and tables["bf16"] and tables["fp32"] != tables["bf16"], tables
    assert dry.count("estimate from") == 4 and "main_table_bf16" in dry

    text = (out / "summary.md").read_text()
    assert "For the sweep headers" in text and "main_table: GPU-hours fp32 ~" in text
    assert "domain_alignment: GPU-hours fp32 ~" in text
    log = (out / "log.txt").read_text()
    assert "calibrate | [4/4]" in log  # the calibration's progress, line by line as it came
    assert done.stdout.rstrip().endswith(text.rstrip().splitlines()[-1])  # the summary is printed last


def estimate_table(dry_runs: str, name: str) -> list[str]:
    """The per-configuration estimate rows of one dry run in dry-runs.txt (between "estimate from" and "total:")."""
    section = dry_runs.split(f"=== {name}: ", 1)[1].split("\n=====", 1)[0]
    return section.split("estimate from", 1)[1].split("\ntotal:", 1)[0].splitlines()[3:]


def test_carried_wheels_fill_what_is_missing_or_older_and_never_replace_a_newer_one(tmp_path: Path) -> None:
    from importlib.metadata import version

    wheels = tmp_path / "whl"
    wheels.mkdir()
    older_timm = "timm-0.0.1-py3-none-any.whl"
    newer_peft = f"peft-{version('peft')}.post99-py3-none-any.whl"
    for name in (older_timm, newer_peft):
        (wheels / name).write_bytes(b"")
    chosen, lines = gpu_check_wheels.wheels_to_install(wheels)
    assert [w.name for w in chosen] == [newer_peft]
    assert any(line.startswith("timm: ") and "not needed" in line for line in lines)


def test_a_package_neither_installed_nor_carried_stops_the_install_naming_the_preparation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(gpu_check_wheels.CARRIED, "no-such-distribution", "no_such_module")
    with pytest.raises(SystemExit, match=r"no-such-distribution not installed and no wheel in .*--prepare-wheels"):
        gpu_check_wheels.wheels_to_install(tmp_path)


def test_a_job_past_its_deadline_is_interrupted_and_its_output_kept(tmp_path: Path) -> None:
    log = gpu_check_jobs.Log(tmp_path / "log.txt")
    code = "import time\nprint('started', flush=True)\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
    code += "    print('kept what it had', flush=True)\n    raise SystemExit(130)\n"
    job = gpu_check_jobs.Job("sleeper", [sys.executable, "-c", code], {}, tmp_path, log, echo=True)
    started = time.monotonic()
    assert job.wait(time.monotonic() + 3) == 130
    assert job.timed_out and time.monotonic() - started < 30
    assert job.lines == ["started", "kept what it had"]
    assert "sleeper | kept what it had" in (tmp_path / "log.txt").read_text()


def _dry_run_text() -> str:
    """A `--dry-run --calibration` text as the command prints it (its table by the command's own formatter)."""
    from vfm_ablate.text_tables import format_table

    row = {"backbone": "dinov2_vitg14_reg", "regime": "frozen", "train": "lucchi_pp", "per trial": "2.1 h"}
    rows = [
        {**row, "GPU-h": "10.50"},
        {**row, "regime": "lora", "per trial": "3.0 h", "GPU-h": "15.00"},
        {**row, "backbone": "dinov2_vits14_reg", "per trial": "not calibrated", "GPU-h": "0.00"},
    ]
    return "\n".join(
        [
            "",
            "estimate from cal.json: cuda 'NVIDIA H200', torch 2.11.0, 2026-12-02 (measured)",
            format_table(rows),
            "not calibrated (1 configurations; run `vfm-ablate calibrate` with this sweep file): x",
            "total: 15 trials, 25.50 trial-hours, 25.50 GPU-hours (a trial's hours x the GPU share it holds)",
            "epochs: 100 per trial assumed (early stopping; set --epochs N)",
            "makespan on cluster.yaml at its largest (8 nodes, 8 GPUs): 6.1 h (trials 6.0 h packed in sweep order)",
            "  up to 7.2 h if trials sharing a GPU slow each other down (each was timed alone)",
        ]
    )


def test_the_dry_runs_figures_are_read_from_its_text() -> None:
    f = gpu_check_read.dry_run_figures(_dry_run_text())
    assert (f["trials"], f["trial_hours"], f["gpu_hours"]) == (15, 25.5, 25.5)
    assert f["makespan"] == "6.1 h" and f["makespan_if_compute_bound"] == "7.2 h"
    assert f["not_calibrated"] == 1 and f["epochs"].startswith("100 per trial assumed")
    assert f["gpu_hours_by_backbone"] == {"dinov2_vitg14_reg": 25.5, "dinov2_vits14_reg": 0.0}
    assert gpu_check_read.dry_run_figures("error: something")["gpu_hours"] is None


def test_trials_are_compared_metric_by_metric_within_the_tolerance() -> None:
    ref = {"metrics": {"iou_fg/a": 0.50, "macro_iou_fg": 0.40}, "first_train_loss": 0.5}
    close = {"metrics": {"iou_fg/a": 0.505, "macro_iou_fg": 0.398}, "first_train_loss": 0.501}
    far = {"metrics": {"iou_fg/a": 0.50, "macro_iou_fg": 0.45}, "first_train_loss": 0.5}
    nan = {"metrics": {"iou_fg/a": float("nan"), "macro_iou_fg": 0.40}, "first_train_loss": 0.5}
    assert gpu_check_read.compare_trials(ref, close, 0.01)["ok"]
    assert not gpu_check_read.compare_trials(ref, far, 0.01)["ok"]
    assert "iou_fg/a" in gpu_check_read.compare_trials(ref, nan, 0.05)["why"]
    assert not gpu_check_read.compare_trials(ref, None, 0.05)["ok"]


def test_sweep_copies_change_only_what_they_name(tmp_path: Path) -> None:
    import yaml

    source = REPO / "sweeps" / "domain_alignment.yaml"
    copy = gpu_check_inputs.sweep_copy(
        source, tmp_path, {"base.precision": "bf16", "name": "domain_alignment_bf16"}, "bf16"
    )
    original = yaml.safe_load(source.read_text())
    changed = yaml.safe_load(copy.read_text())
    assert changed["base"].pop("precision") == "bf16" and changed.pop("name") == "domain_alignment_bf16"
    original.pop("name")
    assert changed == original
    assert gpu_check_inputs.sweep_copy(source, tmp_path, {}, "as is") == source
