"""Recompute the cost lines of the study sweep files' headers from the cost model.

No GPU calibration exists yet (no GPU was available to this project's sessions), so the seconds come from FLOP
counts (`vfm-ablate calibrate --flops`: torch's FlopCounterMode on the meta device) at an assumed sustained
throughput, and the GPU shares from the backbone entries' guesses; epochs are the stated assumption. Dataset
counts are the full study datasets (Lucchi++ 165 train / 165 test at 768x1024, VNC 17 / 3 at 1024x1024) even
where only the shared subset is on disk. Run `vfm-ablate calibrate SWEEP.yaml` on the GPU, then
`vfm-ablate run SWEEP.yaml --dry-run --calibration FILE --cluster cluster.yaml`, for measured figures.

    python benchmarks/estimate_study_sweeps.py [--tflops 40] [--epochs 100] [--sweeps NAME ...]
        [--save-calibration FILE]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from _shared import SHARED_DATA

from vfm_ablate.calibration.calibrate import calibrate
from vfm_ablate.calibration.records import CalibrationSettings, DeviceInfo, save_calibration
from vfm_ablate.models.registry import get_entry
from vfm_ablate.sweep.cost.epochs import EpochModel
from vfm_ablate.sweep.cost.estimate import estimate_sweep
from vfm_ablate.sweep.cost.packing import cluster_nodes
from vfm_ablate.sweep.cost.workload import DatasetShape, config_keys, sweep_workloads
from vfm_ablate.sweep.describe import duration
from vfm_ablate.sweep.plan import plan
from vfm_ablate.sweep.spec import load_sweep

REPO = Path(__file__).resolve().parents[1]
STUDY = [
    "main_table",
    "scale_dinov2",
    "scale_dinov3",
    "scale_openclip",
    "lora_rank",
    "sampling",
    "domain_diagnostics",
    "domain_alignment",
    "label_efficiency",
]
FULL_STUDY_DATA = {
    "lucchi_pp": DatasetShape("lucchi_pp", 165, 165, 768, 1024),
    "vnc": DatasetShape("vnc", 17, 3, 1024, 1024),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tflops", type=float, default=40.0, help="assumed sustained TFLOP/s (fp32, H100)")
    parser.add_argument("--epochs", type=int, default=100, help="assumed epochs to early stopping")
    parser.add_argument("--memory-gb", type=float, default=80.0)
    parser.add_argument("--save-calibration", type=Path, help="also write the FLOP-derived calibration file")
    parser.add_argument("--sweeps", nargs="+", default=STUDY, choices=STUDY, help="which study sweep files")
    args = parser.parse_args()
    os.environ.setdefault("VFM_ABLATE_DATA_ROOT", str(SHARED_DATA))
    sweeps = {name: load_sweep(REPO / "sweeps" / f"{name}.yaml") for name in args.sweeps}
    plans = {n: plan(s) for n, s in sweeps.items()}
    workloads = {n: sweep_workloads(p, FULL_STUDY_DATA) for n, p in plans.items()}
    keys = {k.label(): k for w in workloads.values() for k in config_keys(w)}
    entries = {k.backbone: get_entry(k.backbone) for k in keys.values()}
    cal = calibrate(
        list(keys.values()),
        entries,
        CalibrationSettings(warmup=0, repeats=1, assumed_tflops=args.tflops),
        info=DeviceInfo(kind="cuda", name="H100 80GB (FLOP estimate)", memory_gb=args.memory_gb, cpu_count=1),
        progress=lambda line: None,
    )
    if cal.notes:
        print("not counted:", *cal.notes, sep="\n  ")
    if args.save_calibration:
        save_calibration(cal, args.save_calibration)
    nodes = cluster_nodes(REPO / "cluster.yaml")
    gpus = sum(n.gpus for n in nodes)
    epochs = EpochModel(assumed=args.epochs)
    print(f"FLOP counts at {args.tflops:g} TFLOP/s, {args.epochs} epochs assumed, cluster.yaml: {gpus} x H100\n")
    for name, the_plan in plans.items():
        est = estimate_sweep(the_plan, workloads[name], cal, epochs, nodes, "cluster.yaml")
        by_backbone: dict[str, float] = {}
        for t in est.trials:
            by_backbone[t.trial.spec.backbone] = by_backbone.get(t.trial.spec.backbone, 0.0) + (t.seconds or 0) / 3600
        low, high = est.wall_s or 0.0, est.launch_s + (est.compute_bound_s or 0.0)
        print(
            f"{name}: {len(est.trials)} trials, {est.trial_hours:.0f} H100-hours (trial-hours), "
            f"makespan on {gpus} H100s {duration(low)}-{duration(max(low, high))}; largest: "
            + ", ".join(f"{b} {h:.0f} h" for b, h in sorted(by_backbone.items(), key=lambda x: -x[1])[:3])
        )


if __name__ == "__main__":
    main()
