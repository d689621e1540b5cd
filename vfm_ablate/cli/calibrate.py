"""`vfm-ablate calibrate SWEEP.yaml`: measure what the sweep's trials cost on this machine, into a calibration
file that `vfm-ablate run SWEEP.yaml --dry-run --calibration FILE` turns into hours, GPU shares and a makespan."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .arguments import COUNT, integer, number

if TYPE_CHECKING:
    from ..sweep.spec import SweepSpec


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="measure seconds per step / image and peak memory of a sweep's configurations on this machine",
        description="Time the training step, evaluation and feature extraction of every (backbone, regime, "
        "precision, input size, batch size) a sweep file needs, with random-init weights, each in a fresh "
        "process (its own peak memory), warm-up excluded; and the reading / resizing of its datasets.",
    )
    p.add_argument("sweep", type=Path, help="sweep file whose backbones and input sizes to measure")
    p.add_argument("-o", "--out", type=Path, help="calibration file to write (default: calibration-<sweep>.json)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--warmup", type=integer(0), default=2, help="untimed steps before timing (default 2)")
    p.add_argument("--repeats", type=COUNT, default=10, help="timed repeats per quantity (default 10; median used)")
    p.add_argument(
        "--threads", type=COUNT, help="torch CPU threads per measurement (default: the sweep's cpu per trial)"
    )
    p.add_argument(
        "--concurrent",
        type=COUNT,
        help="copies of each configuration measured at once, as trials share the device (default: on a CPU, the "
        "trials the sweep runs at once on this machine; on a GPU 1)",
    )
    p.add_argument(
        "--isolate",
        choices=["configuration", "backbone"],
        default="configuration",
        help="what one fresh measuring process covers (default: one configuration, its own peak memory); "
        "'backbone': all of a backbone's configurations, imports and CUDA start paid once (CUDA peaks are reset per "
        "configuration; on a CPU no peak memory is then reported); one copy at a time",
    )
    p.add_argument("--backbone", nargs="+", help="only these backbone entries of the sweep")
    p.add_argument(
        "--timeout", type=number(0, above=True), default=1800, help="seconds allowed per configuration (default 1800)"
    )
    p.add_argument(
        "--flops",
        type=number(0, above=True),
        metavar="TFLOPS",
        help="no timing: derive seconds from FLOP counts at this sustained TFLOP/s (for a GPU not at hand)",
    )
    p.add_argument("--device-name", default="GPU (FLOP estimate)", help="with --flops: the device it stands for")
    p.add_argument("--device-memory-gb", type=number(0, above=True), help="with --flops: that device's memory")
    p.add_argument(
        "--no-ray", action="store_true", help="do not time a launch's start-up (CLI, MLflow store, Ray), seconds each"
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..calibration.calibrate import CalibrationInterrupted, calibrate
    from ..calibration.records import CalibrationSettings, DeviceInfo, save_calibration
    from ..errors import ConfigError
    from ..sweep.cost.workload import config_keys, sweep_workloads
    from ..sweep.plan import load_plan
    from .folders import check_output_file

    the_plan = load_plan(args.sweep)
    sweep = the_plan.sweep
    out = args.out or Path(f"calibration-{sweep.name}.json")
    check_output_file(out, "-o/--out")  # before minutes of measuring, not after
    workloads = sweep_workloads(the_plan)
    keys = config_keys(workloads)
    if args.backbone:
        known = {k.backbone for k in keys}
        unknown = sorted(set(args.backbone) - known)
        if unknown:
            raise ConfigError(
                f"--backbone {', '.join(unknown)}: not in {args.sweep} (it uses {', '.join(sorted(known))})"
            )
        keys = [k for k in keys if k.backbone in args.backbone]
    entries = {k.backbone: the_plan.backbones[k.backbone] for k in keys}
    sizes: dict[str, set[tuple[int, int]]] = {}
    for w in workloads:
        for name, size in w.sizes.items():
            sizes.setdefault(name, set()).add(size)
    datasets = {name: (the_plan.datasets[name], sorted(s)) for name, s in sizes.items()}
    threads = args.threads or max(1, int(sweep.resources.cpu))
    if args.isolate == "backbone" and (args.concurrent or 1) != 1:
        raise ConfigError(
            f"--isolate backbone measures one copy at a time; --concurrent {args.concurrent} needs "
            "--isolate configuration"
        )
    concurrent = args.concurrent or (1 if args.isolate == "backbone" else _trials_at_once(sweep, args.device))
    if concurrent < 1:
        raise ConfigError(f"--concurrent must be at least 1, got {concurrent}")
    settings = CalibrationSettings(
        warmup=args.warmup,
        repeats=args.repeats,
        threads=threads,
        concurrent=concurrent,
        isolate=args.isolate,
        assumed_tflops=args.flops,
        sweep=str(args.sweep),
    )
    info = None
    if args.flops is not None:
        info = DeviceInfo(kind="cuda", name=args.device_name, memory_gb=args.device_memory_gb, cpu_count=1)
    print(
        f"calibrating {len(keys)} configurations of {args.sweep} "
        + (
            f"from FLOP counts at {args.flops:g} TFLOP/s"
            if args.flops
            else f"on {args.device}, {threads} thread(s), {concurrent} at once"
        )
    )
    out = args.out or Path(f"calibration-{sweep.name}.json")
    try:
        calibration = calibrate(
            keys,
            entries,
            settings,
            device=args.device,
            datasets=datasets,
            timeout_s=args.timeout,
            info=info,
        )
    except CalibrationInterrupted as stop:  # Ctrl-C keeps what was measured
        save_calibration(stop.calibration, out)
        print(f"interrupted: wrote {out} with the {len(stop.calibration.measurements)} configurations measured so far")
        return 130
    if args.flops is None and not args.no_ray:
        from ..calibration.launch import launch_costs

        launch, notes = launch_costs(args.sweep, sweep.tracking.enabled)
        calibration = calibration.model_copy(update={**launch, "notes": [*calibration.notes, *notes]})
        for note in notes:
            print(note)
        print(
            "once per launch: "
            + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.1f} s" for k, v in launch.items())
        )
    save_calibration(calibration, out)
    print(
        f"wrote {out}: {len(calibration.measurements)} configurations"
        + (f", {len(calibration.notes)} not measured (see its notes)" if calibration.notes else "")
        + f"; use it: vfm-ablate run {args.sweep} --dry-run --calibration {out}"
    )
    return 0 if calibration.measurements else 1


def _trials_at_once(sweep: SweepSpec, device: str) -> int:
    """On a CPU: the trials the sweep's local Ray runs side by side here (they share cores and memory bandwidth,
    so each is measured beside as many copies); on a GPU: 1 (measure packing with --concurrent N)."""
    import os

    from ..device import resolve_device

    if resolve_device(device).type != "cpu":
        return 1
    cpus = sweep.run.num_cpus or os.cpu_count() or 1
    at_once = max(1, int(cpus // sweep.resources.cpu))
    return min(at_once, sweep.run.max_concurrent_trials or at_once)
