"""The cost model against reality: calibrate, predict, run and compare, on this machine.

For each sweep: `vfm-ablate calibrate` (a fresh process per configuration), the `--dry-run` estimate from that
calibration (makespan on the local Ray the run will start, epochs = the trials' own max_epochs), then the sweep
itself run end to end (`vfm-ablate run`, local Ray, MLflow in a fresh SQLite file), timed from the command's
start to its exit. Prints predicted vs measured wall time, per-trial seconds (median ratio), the backbone
extractions of frozen trials, and the 1-minute load average before and after each step: the machine is shared,
and a load that changes between calibration and run moves the comparison.

    python benchmarks/bench_cost_model.py [--sweeps demo lite0] [--out DIR]

demo: sweeps/demo.yaml (16 tiny random-init trials, synthetic data); lite0: benchmarks/sweeps/lite0_frozen.yaml
(6 frozen EfficientNet-Lite0 trials on ../shared/data, 2 datasets x 3 repeats; skipped without the data).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _shared import SHARED_DATA

REPO = Path(__file__).resolve().parents[1]
SWEEPS = {"demo": REPO / "sweeps" / "demo.yaml", "lite0": REPO / "benchmarks" / "sweeps" / "lite0_frozen.yaml"}


def load() -> float:
    return os.getloadavg()[0]


def vfm(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    """Run the CLI in a fresh process; (wall seconds, output)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vfm_ablate", *args], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"vfm-ablate {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return wall, proc.stdout


def predict(sweep_path: Path, calibration: Path, tracking_uri: str) -> object:
    from vfm_ablate.calibration.records import load_calibration
    from vfm_ablate.sweep.cost.epochs import observed_epochs
    from vfm_ablate.sweep.cost.estimate import estimate_sweep
    from vfm_ablate.sweep.cost.packing import Node
    from vfm_ablate.sweep.cost.workload import sweep_workloads
    from vfm_ablate.sweep.plan import plan
    from vfm_ablate.sweep.spec import load_sweep

    sweep = load_sweep(sweep_path)
    the_plan = plan(sweep)
    workloads = sweep_workloads(the_plan)
    cpus = sweep.run.num_cpus or os.cpu_count() or 1
    epochs = observed_epochs(tracking_uri, sweep.experiment_name)
    return estimate_sweep(
        the_plan, workloads, load_calibration(calibration), epochs, [Node(cpus=float(cpus), gpus=0)], f"{cpus} CPUs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweeps", nargs="+", default=list(SWEEPS), choices=list(SWEEPS))
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="bench_cost_")))
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO), "VFM_ABLATE_DATA_ROOT": str(SHARED_DATA)}
    rows = []
    for name in args.sweeps:
        if name == "lite0" and not (SHARED_DATA / "vnc").is_dir():
            print(f"lite0: skipped, real data not found at {SHARED_DATA}")
            continue
        sweep_path = SWEEPS[name]
        work = args.out / name
        work.mkdir(parents=True, exist_ok=True)
        cal = work / "calibration.json"
        uri = f"sqlite:///{work / 'mlflow.db'}"
        load_0 = load()
        cal_s, _ = vfm(["calibrate", str(sweep_path), "-o", str(cal)], env, work)
        load_1 = load()
        os.environ["VFM_ABLATE_DATA_ROOT"] = env["VFM_ABLATE_DATA_ROOT"]
        est = predict(sweep_path, cal, uri)
        run_s, output = vfm(
            ["run", str(sweep_path), "--storage-path", str(work / "results"), "--tracking-uri", uri], env, work
        )
        load_2 = load()
        with open(work / "results" / sweep_path.stem / "results.csv") as f:
            measured = {r["id"]: r for r in csv.DictReader(f)}
        ratios = [
            float(measured[t.trial.trial_id]["wall_time_s"]) / t.seconds
            for t in est.trials
            if t.seconds and measured.get(t.trial.trial_id, {}).get("wall_time_s")
        ]
        extractions = sum(int(float(r.get("backbone_extractions") or 0)) for r in measured.values())
        predicted = est.wall_s or float("nan")
        rows.append((name, len(est.trials), cal_s, predicted, run_s, ratios, extractions, (load_0, load_1, load_2)))
        print(f"\n{name}: calibrated in {cal_s:.0f} s; run output tail:\n" + "\n".join(output.splitlines()[-3:]))

    print(
        "\nsweep   trials  calibrate  predicted wall  measured wall  error   trial s measured/predicted (median)  "
        "extractions  load 1-min (calibrate, run start, end)"
    )
    for name, n, cal_s, predicted, run_s, ratios, extractions, loads in rows:
        error = (predicted - run_s) / run_s * 100
        ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})" if ratios else "-"
        print(
            f"{name:<7} {n:>6}  {cal_s:>7.0f} s  {predicted:>12.1f} s  {run_s:>11.1f} s  {error:+5.0f} %   {ratio:<36} "
            f"{extractions:>11}  {loads[0]:.2f}, {loads[1]:.2f}, {loads[2]:.2f}"
        )
    print(f"outputs: {args.out}")


if __name__ == "__main__":
    main()
