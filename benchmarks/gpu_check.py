"""The study's cost measured on a GPU: one bounded command for a short, one-off GPU lease (issue 25).

A GPU machine lent for minutes has torch, timm, peft, scikit-image and tifffile but not pydantic, MONAI or
open_clip (nor Ray or MLflow, which the trial engine, `calibrate` and the dry run do not need), and it reaches no
network. So the missing wheels are downloaded here first and carried with the working tree:

    .venv/bin/python benchmarks/gpu_check.py --prepare-wheels        # here, with the network: into .whl/ (ignored)

and then, on the GPU machine, from the repository's root, one command (its budget: 8 minutes in all):

    python3 benchmarks/gpu_check.py --out OUT_DIR                     # the `run` tool: carry [".whl"]

Stages, in order, each with its own deadline (a stage that runs out of time is stopped and the check goes on with
what it has): install the carried wheels that the machine lacks or has older (never over newer ones); prepare:
stand-in datasets in the study's on-disk layouts with the full study's counts and sizes (Lucchi++ 165 + 165 slices
of 768 x 1024, VNC 20 of 1024 x 1024: the real data is not on that machine; only counts and sizes enter the cost,
and `vfm-ablate data check` reads them with the real loaders), the machine (torch, CUDA, the GPU, a matrix-product
rate) and the backbones' sizes; `vfm-ablate calibrate --isolate backbone` of the main table's configurations (9
study backbones x frozen / LoRA x both input sizes x fp32 / bf16, random init built on the GPU, largest backbone
first); the demo's trial (synthetic data, tiny random-init ViT, LoRA, paired balanced) on the CPU and on the GPU in
fp32 and in bf16, IoU compared; `vfm-ablate run --dry-run --calibration` of sweeps/main_table.yaml and
sweeps/domain_alignment.yaml on cluster.yaml, fp32 against bf16 (a copy of each sweep with `precision: bf16`).
domain_alignment's batch-1 groups ("1+1" batches) are scaled per image from the measured batch 2.

Written to OUT_DIR (at most 8 files come back from the GPU machine): log.txt (as it goes, line by line),
calibration.json, dry-runs.txt (the dry runs in full), summary.json and summary.md (the figures, and the
lines for the README and the sweep headers). The last lines printed are the summary.

`--tiny` runs the same stages on a CPU (a tiny random-init backbone, small stand-ins and inputs, a smaller trial):
tests/test_gpu_check.py runs it so the script is known to work before it meets a GPU. `--rehearse` runs the GPU
configuration on a CPU with seconds from FLOP counts (`calibrate --flops`) instead of timing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from gpu_check_inputs import axis_values, set_dotted, sweep_copy, write_standins
from gpu_check_jobs import Job, Log
from gpu_check_read import (
    calibration_rows,
    compare_trials,
    dry_run_figures,
    parameter_counts,
    summary_markdown,
    trial_metrics,
)
from gpu_check_wheels import prepare_wheels, wheels_to_install

REPO = Path(__file__).resolve().parents[1]
CLI = "import sys; from vfm_ablate.cli.main import main; sys.exit(main())"  # `vfm-ablate` without installing it
STUDY_SWEEPS = ("main_table", "domain_alignment")  # the dry runs; the first one's configurations are calibrated
PRECISIONS = ("fp32", "bf16")
CLUSTER_FILE = REPO / "cluster.yaml"
CLUSTER_GPU_MEMORY_GB = 80.0  # cluster.yaml's workers: a3-highgpu-1g, 1 x H100 80 GB

# the demo trial compared between the CPU and the device (demo.yaml's base, one of its grid points)
TRIAL = {"backbone": "tiny_vit_p14", "regime": "lora", "data.train": ["synthetic_a", "synthetic_b"]}
TRIAL_SETTINGS = {"data.sampling": "balanced", "seed": 0, "split_seed": 0, "num_overlays": 0, "optim.max_epochs": 4}
# Device against CPU, same seeds, same initial weights (built on the CPU, then moved), same batches. fp32 differs
# only by summation order and cuDNN's TF32 convolutions (on by default in PyTorch): per-op relative errors of
# 1e-6 to 1e-3, which a few epochs carry into a handful of boundary pixels (on the CPU, one thread against two
# moves it by 2e-4). bf16 (8 significant bits) moves more: on the CPU the same trial in bf16 lands within 0.017 of
# fp32 (README, "The study's cost on a GPU"; the tiny check runs it).
# on a CPU (tiny, rehearsal): the demo's two synthetic domains with fewer, smaller images
CPU_TRIAL = {
    "datasets": {
        f"tiny_{d}": {"layout": "synthetic", "domain": d, "n_train": 6, "n_test": 2, "size": [32, 32]} for d in "ab"
    },
    "data.train": ["tiny_a", "tiny_b"],
    "data.resize": {"target": 32},
    "optim.lr": 3.0e-3,
}
FP32_IOU_TOLERANCE = 0.01
BF16_IOU_TOLERANCE = 0.05


@dataclass(frozen=True)
class Mode:
    """One configuration of the check: the GPU run, or the tiny CPU run that tests it."""

    device: str
    budget_s: float  # the whole check
    lucchi: tuple[int, int, int, int]  # train slices, test slices, height, width
    vnc: tuple[int, int, int]  # labelled slices, height, width
    calibrate: tuple[str, ...]  # extra `vfm-ablate calibrate` flags
    trial: dict[str, Any] = field(default_factory=dict)  # dotted keys changed in the compared trial
    sweep_overrides: dict[str, Any] = field(default_factory=dict)  # dotted keys set in each study sweep's copy
    # seconds: the preparation's cap, and what is kept back for the trials and for the dry runs (+ summary);
    # the calibration has the rest. A larger --budget stretches all of them alike.
    prepare_s: float = 60.0
    trials_s: float = 90.0
    dry_runs_s: float = 75.0
    matmul: bool = True  # time a large matrix product (the device's rate, for context)


MODES = {
    "gpu": Mode(
        device="cuda",
        budget_s=480.0,
        lucchi=(165, 165, 768, 1024),
        vnc=(20, 1024, 1024),
        calibrate=("--warmup", "1", "--repeats", "2", "--timeout", "120"),
    ),
    "tiny": Mode(
        device="cpu",
        budget_s=420.0,
        lucchi=(3, 2, 32, 32),  # one input size for both datasets: 4 configurations to time, not 16
        vnc=(6, 32, 32),
        calibrate=("--warmup", "1", "--repeats", "2", "--timeout", "120", "--threads", "1"),
        trial=CPU_TRIAL,
        sweep_overrides={
            "axes.backbone": ["tiny_vit_p16"],
            "base.weights": "random",
            "base.data.resize": {"target": 32},
        },
        prepare_s=100.0,
        trials_s=150.0,
        dry_runs_s=100.0,
        matmul=False,
    ),
    # the GPU configuration rehearsed on a CPU: full-size stand-ins, the study's backbones and sweeps, but seconds
    # from FLOP counts (`calibrate --flops`, meta device) instead of timing, and the trials on the CPU
    "rehearsal": Mode(
        device="cpu",
        budget_s=1800.0,
        lucchi=(165, 165, 768, 1024),
        vnc=(20, 1024, 1024),
        calibrate=("--flops", "40", "--device-name", "rehearsal: FLOP counts at 40 TFLOP/s"),
        trial=CPU_TRIAL,
        prepare_s=300.0,
        trials_s=400.0,
        dry_runs_s=300.0,
        matmul=False,
    ),
}


# ----------------------------------------------------------------------------------------------- the check


ENV_PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
out = {"python": sys.version.split()[0], "torch": torch.__version__, "import_torch_s": time.perf_counter() - t0,
       "cuda_available": torch.cuda.is_available(), "cuda_runtime": torch.version.cuda}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    out.update(gpu=p.name, gpu_memory_gb=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
               multiprocessors=p.multi_processor_count)
modules = {}
for name in ["pydantic", "monai", "open_clip", "timm", "peft", "numpy", "skimage", "tifffile", "typing_extensions"]:
    t = time.perf_counter()
    try:
        mod = __import__(name)
        modules[name] = {"version": getattr(mod, "__version__", "?"), "file": getattr(mod, "__file__", "?"),
                         "import_s": round(time.perf_counter() - t, 2)}
    except Exception as err:
        modules[name] = {"error": f"{type(err).__name__}: {err}"}
out["modules"] = modules
t = time.perf_counter()
import vfm_ablate.trial
from vfm_ablate.trial.forward import dice_loss
dice_loss()
out["import_engine_s"] = round(time.perf_counter() - t, 2)
import importlib.util
out["not_needed_but_installed"] = {m: importlib.util.find_spec(m) is not None for m in ("ray", "mlflow", "optuna")}
if torch.cuda.is_available() and "--matmul" in sys.argv:
    rates = {}
    for dtype, reps in ((torch.float32, 3), (torch.bfloat16, 10)):
        a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
        b = torch.randn(8192, 8192, device="cuda", dtype=dtype)
        for _ in range(2):
            a @ b
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            a @ b
        end.record()
        torch.cuda.synchronize()
        rates[str(dtype).split(".")[1]] = round(2 * 8192**3 * reps / (start.elapsed_time(end) / 1e3) / 1e12, 1)
        del a, b
    out["matmul_tflops"] = rates
    out["matmul_tf32_allowed"] = torch.backends.cuda.matmul.allow_tf32
    out["cudnn_tf32_allowed"] = torch.backends.cudnn.allow_tf32
print("ENV " + json.dumps(out))
"""


class Check:
    def __init__(self, args: argparse.Namespace, mode: Mode) -> None:
        self.args, self.mode = args, mode
        self.out = args.out.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = Log(self.out / "log.txt")
        self.budget = args.budget or mode.budget_s
        self.scale = self.budget / mode.budget_s  # a larger budget stretches every stage's share alike
        self.end = time.monotonic() + self.budget
        self.work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="vfm-gpu-check-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.site = self.work / "site"
        self.summary: dict[str, Any] = {
            "mode": args.mode_name,
            "budget_s": self.budget,
            "stages": {},
        }
        self.env = self._child_env([])
        self.trial_settings = {**TRIAL, **TRIAL_SETTINGS, **mode.trial}

    # -- helpers

    def _child_env(self, paths: list[Path]) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("MLFLOW_TRACKING_URI", None)  # the dry runs read no tracking store: epochs are the stated assumption
        env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), str(REPO), env.get("PYTHONPATH", "")]).rstrip(":")
        env["PYTHONUNBUFFERED"] = "1"
        env["VFM_ABLATE_DATA_ROOT"] = str(self.work / "data")
        env["HF_HUB_OFFLINE"] = "1"  # random-init weights only; nothing is downloaded
        return env

    def cli(self, name: str, *argv: str, echo: bool = True, threads: int | None = None) -> Job:
        """`threads`: torch's CPU threads for this process (OMP_NUM_THREADS), unless the caller of the check set it."""
        command = [sys.executable, "-c", CLI, *argv]
        env = dict(self.env)
        if threads is not None and "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(threads)
        return Job(name, command, env, self.work, self.log, echo)

    def python(self, name: str, *argv: str, echo: bool = True) -> Job:
        return Job(name, [sys.executable, *argv], self.env, self.work, self.log, echo)

    def left(self) -> float:
        return self.end - time.monotonic()

    def stage(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run one stage; its failure is recorded and the check goes on."""
        self.log(f"== {name} ({self.left():.0f} s of the budget left)")
        started = time.monotonic()
        try:
            result = fn()
            status = result.pop("status", "ok")
        except SystemExit as err:
            result, status = {"error": str(err)}, "failed"
        except Exception as err:  # a stage that breaks must not lose the others' figures
            result, status = {"error": f"{type(err).__name__}: {err}"}, "failed"
        result["status"] = status
        result["seconds"] = round(time.monotonic() - started, 1)
        self.summary["stages"][name] = result
        self.log(
            f"== {name}: {status} in {result['seconds']:.0f} s" + (f" ({result['error']})" if "error" in result else "")
        )
        self._write_summary()
        return result

    # -- stages

    def install(self) -> dict[str, Any]:
        wheels = (REPO / self.args.wheels) if not Path(self.args.wheels).is_absolute() else Path(self.args.wheels)
        chosen, lines = wheels_to_install(wheels)
        for line in lines:
            self.log(f"  {line}")
        if chosen:
            shutil.rmtree(self.site, ignore_errors=True)
            argv = ["-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir"]
            job = self.python("pip", *argv, "--target", str(self.site), *map(str, chosen))
            if job.wait(time.monotonic() + min(120.0, self.left())) != 0:
                return {"status": "failed", "error": "pip install failed", "decisions": lines}
            self.env = self._child_env([self.site])
        return {"installed": [w.name for w in chosen], "decisions": lines}

    def prepare(self) -> dict[str, Any]:
        """The stand-in data first (forked writers: no threads yet), then side by side: the machine, the backbones'
        sizes (for the calibration's order) and the data check."""
        started = time.monotonic()
        data = write_standins(self.work / "data", self.mode.lucchi, self.mode.vnc)
        self.log(f"stand-in data in {time.monotonic() - started:.1f} s: {data}")
        reserved = (self.mode.trials_s + self.mode.dry_runs_s) * self.scale + 60  # and a minute to calibrate
        deadline = time.monotonic() + max(30.0, min(self.mode.prepare_s * self.scale, self.left() - reserved))
        probe = self.python("env", "-c", ENV_PROBE, *(["--matmul"] if self.mode.matmul else []), echo=False)
        sizes = None
        if len(axis_values(self.calibration_sweep, "backbone")) > 1:
            sizes = self.cli("backbones", "backbones", echo=False)
        check = self.cli("data-check", "data", "check", "lucchi_pp", "vnc", echo=False)
        smi = shutil.which("nvidia-smi")
        gpu_state = None
        if smi:  # read-only: name, memory, driver, clocks and temperature as found
            query = "name,memory.total,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw,utilization.gpu"
            try:
                done = subprocess.run(
                    [smi, f"--query-gpu={query}", "--format=csv"], capture_output=True, text=True, timeout=20
                )
                gpu_state = done.stdout.strip() or done.stderr.strip()
            except subprocess.TimeoutExpired:
                gpu_state = "nvidia-smi gave no answer within 20 s"
            self.log(f"nvidia-smi: {gpu_state}")
        result: dict[str, Any] = {"standin_data": data, "nvidia_smi": gpu_state}
        probe.wait(deadline)
        env_line = next((ln for ln in probe.lines if ln.startswith("ENV ")), None)
        result["environment"] = json.loads(env_line[4:]) if env_line else {"error": probe.text[-1500:]}
        self.log("environment: " + json.dumps(result["environment"]))
        if sizes is not None:
            sizes.wait(deadline)
            self.params = parameter_counts(sizes.text)
        check_rc = check.wait(deadline)
        result["data_check"] = "ok" if check_rc == 0 else check.text[-1500:]
        if check_rc != 0:
            self.log(check.text[-1500:])
            why = "ran out of time" if check.timed_out else "does not read"
            return {**result, "status": "failed", "error": f"the data check of the stand-ins {why}"}
        if self.mode.device == "cuda" and not result["environment"].get("cuda_available"):
            return {**result, "status": "failed", "error": "no CUDA device visible (on a CPU: --tiny or --rehearse)"}
        return result

    def trials(self) -> dict[str, Any]:
        """The demo trial on the CPU and on the device (fp32, bf16), side by side; IoU compared."""
        deadline = min(time.monotonic() + self.mode.trials_s * self.scale, self.end - self.mode.dry_runs_s * self.scale)
        result = self._finish_trials(self._start_trials(), deadline)
        return {**result, "status": "ok" if result["fp32_ok"] and result["bf16_ok"] else "failed"}

    def _start_trials(self) -> dict[str, Job]:
        base = yaml.safe_load((REPO / "sweeps" / "demo.yaml").read_text())["base"]
        for key, value in self.trial_settings.items():
            set_dotted(base, key, value)
        trial_file = self.work / "trial.yaml"
        trial_file.write_text(yaml.safe_dump(base, sort_keys=False))
        runs = {"cpu_fp32": ("cpu", "fp32"), "device_fp32": (self.mode.device, "fp32")}
        runs["device_bf16"] = (self.mode.device, "bf16")
        self.trial_runs = runs
        # on a CPU the device's fp32 run is the reference itself
        runs = {name: run for name, run in runs.items() if run != ("cpu", "fp32") or name == "cpu_fp32"}
        # on a CPU the trials share its cores: with torch's default (a thread per core each) they spin against each
        # other (the tiny pair on 2 cores: 63 s, against 11 s with a core each)
        threads = max(1, (os.cpu_count() or 1) // len(runs)) if self.mode.device == "cpu" else None
        jobs = {}
        for name, (device, precision) in runs.items():
            out = self.work / "trials" / name
            sets = ["--set", f"device={device}", "--set", f"precision={precision}"]
            argv = ["train", "--config", str(trial_file), *sets, "--out", str(out)]
            jobs[name] = self.cli(f"train-{name}", *argv, threads=threads)
        return jobs

    def _finish_trials(self, jobs: dict[str, Job], deadline: float) -> dict[str, Any]:
        results = {}
        for name, job in jobs.items():
            job.wait(deadline)
            results[name] = trial_metrics(self.work / "trials" / name)
        results.setdefault("device_fp32", results["cpu_fp32"])  # a CPU "device": the same run
        fp32 = compare_trials(results["cpu_fp32"], results["device_fp32"], FP32_IOU_TOLERANCE)
        bf16 = compare_trials(results["cpu_fp32"], results["device_bf16"], BF16_IOU_TOLERANCE)
        for label, cmp in (("fp32", fp32), ("bf16", bf16)):
            self.log(
                f"trial {self.mode.device} {label} vs cpu fp32: {'OK' if cmp['ok'] else 'FAILED'} "
                f"(max |ΔIoU| {cmp.get('max_abs_delta')}, tolerance {cmp['tolerance']:g}) {cmp.get('why', '')}"
            )
        return {
            "settings": self.trial_settings,
            "runs": {k: {"device": d, "precision": p} for k, (d, p) in self.trial_runs.items()},
            "results": results,
            "fp32_vs_cpu": fp32,
            "bf16_vs_cpu": bf16,
            "fp32_ok": fp32["ok"],
            "bf16_ok": bf16["ok"],
        }

    def calibrate(self) -> dict[str, Any]:
        out = self.out / "calibration.json"
        deadline = self.end - (self.mode.trials_s + self.mode.dry_runs_s) * self.scale
        argv = ["calibrate", str(self.calibration_sweep), "-o", str(out), "--device", self.mode.device]
        argv += ["--isolate", "backbone", "--no-ray", *self.mode.calibrate]
        job = self.cli("calibrate", *argv)
        rc = job.wait(deadline)
        rows, notes, device = calibration_rows(out)
        for note in notes:
            self.log(f"  not measured: {note}")
        status = "ok" if rc == 0 and not notes else ("partial" if rows else "failed")
        return {
            "status": status,
            "exit_status": rc,
            "timed_out": job.timed_out,
            "device": device,
            "measured": rows,
            "notes": notes,
        }

    def dry_runs(self) -> dict[str, Any]:
        calibration = self.out / "calibration.json"
        if not calibration.exists():
            return {"status": "failed", "error": "no calibration file"}
        files = {"measured": calibration}
        measured = json.loads(calibration.read_text())
        if measured.get("device", {}).get("kind") == "cuda":  # GPU shares as on cluster.yaml's 80 GB GPUs
            as_cluster = json.loads(calibration.read_text())
            device = as_cluster["device"]
            device["name"] = f"{device['name']} timings; memory as cluster.yaml's {CLUSTER_GPU_MEMORY_GB:g} GB GPUs"
            device["memory_gb"] = CLUSTER_GPU_MEMORY_GB
            files = {"cluster_memory": self.work / "calibration-cluster-memory.json", "measured": calibration}
            files["cluster_memory"].write_text(json.dumps(as_cluster, indent=2))
        jobs = {}
        for sweep, precision in [(s, p) for s in STUDY_SWEEPS for p in PRECISIONS]:
            sweep_file = self.sweep_files[(sweep, precision)]
            for memory, cal in files.items():
                name = f"{sweep}-{precision}-{memory}"
                argv = ["run", str(sweep_file), "--dry-run", "--calibration", str(cal), "--cluster", str(CLUSTER_FILE)]
                jobs[name] = self.cli(f"dry-run {name}", *argv, echo=False)
        figures = {}
        deadline = self.end - 10
        with (self.out / "dry-runs.txt").open("w") as f:
            for name, job in jobs.items():
                rc = job.wait(deadline)
                f.write(f"{'=' * 30} {name}: exit status {rc}\n{job.text}\n\n")
                figures[name] = {"exit_status": rc, **dry_run_figures(job.text)}
                self.log(f"{name}: " + json.dumps({k: v for k, v in figures[name].items() if k != "epochs"}))
        ran = all(f["exit_status"] == 0 and f["gpu_hours"] is not None for f in figures.values())
        complete = ran and not any(f["not_calibrated"] for f in figures.values())
        status = "ok" if complete else "partial" if ran else "failed"
        return {"status": status, "figures": figures, "files": {k: str(v) for k, v in files.items()}}

    # -- the run

    def run(self) -> int:
        self.log(f"gpu_check: {self.args.mode_name} mode, budget {self.budget:.0f} s, out {self.out}, work {self.work}")
        self.params: dict[str, float] = {}
        sweeps = self.work / "sweeps"
        sweeps.mkdir(exist_ok=True)
        self.sweep_files = {}
        for sweep in STUDY_SWEEPS:
            for precision in PRECISIONS:
                overrides = dict(self.mode.sweep_overrides)
                if precision != "fp32":
                    overrides |= {"base.precision": precision, "name": f"{sweep}_{precision}"}
                note = f"gpu_check ({self.args.mode_name}): {sweep} in {precision}"
                self.sweep_files[(sweep, precision)] = sweep_copy(
                    REPO / "sweeps" / f"{sweep}.yaml", sweeps, overrides, note
                )
        calibrated = {**self.mode.sweep_overrides, "axes.precision": list(PRECISIONS)}
        calibrated["name"] = f"{STUDY_SWEEPS[0]}_calibration"
        first = REPO / "sweeps" / f"{STUDY_SWEEPS[0]}.yaml"
        self.calibration_sweep = sweep_copy(first, sweeps, calibrated, "gpu_check: configurations to time")

        # without the packages, the data or the device nothing else can run; the calibration comes first (the
        # figures the lease is for), then the trials, then the dry runs from what was measured
        if (
            self.stage("install", self.install)["status"] == "ok"
            and self.stage("prepare", self.prepare)["status"] == "ok"
        ):
            self._order_backbones()
            self.stage("calibrate", self.calibrate)
            self.stage("trials", self.trials)
            self.stage("dry runs", self.dry_runs)
        self.summary["elapsed_s"] = round(self.log.elapsed(), 1)
        self._write_summary()
        text = summary_markdown(self.summary, STUDY_SWEEPS, PRECISIONS)
        (self.out / "summary.md").write_text(text)
        self.log(text)
        if not self.args.keep_work and not self.args.work:
            shutil.rmtree(self.work, ignore_errors=True)
        failed = [n for n, s in self.summary["stages"].items() if s["status"] == "failed"]
        return 1 if failed else 0

    def _order_backbones(self) -> None:
        """Largest backbone first: if the budget runs out, the ones left unmeasured cost the least."""
        names = axis_values(self.calibration_sweep, "backbone")
        if len(names) < 2 or not all(n in self.params for n in names):
            return
        ordered = sorted(names, key=lambda n: -self.params[n])
        data = yaml.safe_load(self.calibration_sweep.read_text())
        set_dotted(data, "axes.backbone", ordered)
        self.calibration_sweep.write_text(yaml.safe_dump(data, sort_keys=False))
        self.log("calibration order (largest first): " + ", ".join(ordered))

    def _write_summary(self) -> None:
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="output folder (log, calibration, dry runs, summary)")
    parser.add_argument("--tiny", action="store_true", help="tiny CPU configuration (tests): seconds per stage")
    parser.add_argument(
        "--rehearse",
        action="store_true",
        help="the GPU configuration on a CPU: full-size stand-ins and the study's backbones, seconds from FLOP counts",
    )
    parser.add_argument(
        "--budget", type=float, help="seconds for the whole check (default 480; tiny 420; rehearsal 1200)"
    )
    parser.add_argument("--wheels", default=".whl", help="folder of carried wheels (default .whl)")
    parser.add_argument("--work", help="scratch folder (stand-in data, sweep copies; default a temporary one)")
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary scratch folder")
    parser.add_argument("--prepare-wheels", action="store_true", help="download the carried wheels into --wheels")
    parser.add_argument("--python-version", default="3.12", help="with --prepare-wheels: the GPU machine's Python")
    args = parser.parse_args(argv)
    if args.prepare_wheels:
        dest = Path(args.wheels) if Path(args.wheels).is_absolute() else REPO / args.wheels
        return prepare_wheels(dest, args.python_version)
    if args.out is None:
        parser.error("--out is required (or --prepare-wheels)")
    if args.tiny and args.rehearse:
        parser.error("--tiny and --rehearse are two different configurations: give one")
    args.mode_name = "tiny" if args.tiny else "rehearsal" if args.rehearse else "gpu"
    return Check(args, MODES[args.mode_name]).run()


if __name__ == "__main__":
    sys.exit(main())
