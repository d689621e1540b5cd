"""`vfm-ablate run SWEEP.yaml`: validate a sweep file, print its trials (--dry-run) or run them on Ray Tune."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .arguments import COUNT, number

if TYPE_CHECKING:
    from ..sweep.cost.estimate import SweepEstimate
    from ..sweep.plan import SweepPlan


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="run a sweep file on Ray Tune (local Ray, or a cluster with --address)",
        description="Validate SWEEP.yaml, expand it into trials and run them on Ray Tune with MLflow tracking.",
    )
    p.add_argument("sweep", type=Path, help="sweep file (see sweeps/*.yaml)")
    p.add_argument(
        "--dry-run", action="store_true", help="print the trial count and table with resources; start nothing"
    )
    p.add_argument(
        "--resume", action="store_true", help="finish an interrupted sweep without re-running finished trials"
    )
    p.add_argument("--retry-failed", action="store_true", default=None, help="with --resume: also retry failed trials")
    p.add_argument(
        "--rerun-changed",
        action="store_true",
        help="with --resume: re-run trials trained on backbone/dataset entries (or files) that changed since",
    )
    p.add_argument("--address", help="join a running Ray cluster: 'auto' (on a cluster node) or 'ray://HOST:10001'")
    p.add_argument("--storage-path", help="results/checkpoint location: a folder, shared filesystem path or URI")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the sweep's tracking.uri, else ./mlflow.db)")
    p.add_argument("--max-concurrent-trials", type=COUNT, help="cap on trials running at once")
    p.add_argument("--num-cpus", type=COUNT, help="CPUs of the local Ray instance (not with --address)")
    p.add_argument("--verbose", action="store_true", help="show Ray's and the trials' own log output")
    p.add_argument(
        "--progress-interval",
        type=number(0),
        metavar="SECONDS",
        help="without a terminal (logs, Slurm): at most one epoch line per running trial every SECONDS "
        "(default: the sweep's run.progress_interval_s, 30)",
    )
    cost = p.add_argument_group("cost estimate (with --dry-run) and measured GPU shares")
    cost.add_argument(
        "--calibration",
        type=Path,
        help="calibration file from `vfm-ablate calibrate`: with --dry-run hours, GPU shares and makespan; "
        "without, trials ask for the GPU share their measured memory calls for",
    )
    shape = cost.add_mutually_exclusive_group()
    shape.add_argument("--gpus", type=COUNT, help="makespan on N single-GPU nodes")
    shape.add_argument("--cluster", type=Path, help="makespan on a Ray cluster-launcher file's largest size")
    cost.add_argument("--epochs", type=COUNT, help="epochs per trial where MLflow has no finished trial (default 100)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..sweep.describe import describe_estimate, describe_plan
    from ..sweep.plan import load_plan

    estimate_only = [flag for flag in ("gpus", "cluster", "epochs") if getattr(args, flag) is not None]
    if estimate_only and not (args.dry_run and args.calibration is not None):
        raise ConfigError(
            f"--{estimate_only[0]} shapes the cost estimate of `--dry-run --calibration FILE` and nothing else; add "
            "both (without them it would be ignored)"
        )
    if args.num_cpus is not None and args.address is not None:
        raise ConfigError("--num-cpus sizes the local Ray this command starts; with --address the cluster has its own")
    if args.rerun_changed and not args.resume:
        raise ConfigError("--rerun-changed goes with --resume (a fresh sweep has nothing to re-run)")
    if args.retry_failed and not args.resume:
        raise ConfigError("--retry-failed goes with --resume (a fresh sweep has no failed trials to retry)")
    for flag, value in (("--address", args.address), ("--storage-path", args.storage_path)):
        if value is not None and not value.strip():  # else the default would be used without a word
            raise ConfigError(f"{flag} is empty; give a value, or leave the option out for its default")
    if args.tracking_uri is not None:
        from ..tracking.store import check_tracking_uri

        check_tracking_uri(args.tracking_uri, "--tracking-uri")
    the_plan = load_plan(args.sweep)  # the one expansion of this command; everything below reads it
    if args.dry_run:
        from ..sweep.capacity import local_node, local_note
        from ..sweep.inputs import check_inputs

        print(describe_plan(the_plan))
        if args.address is None:  # what `run` here (no --address) would refuse, said now
            sweep = the_plan.sweep
            here = local_node(args.num_cpus or sweep.run.num_cpus, sweep.run.num_gpus)
            if (note := local_note(the_plan.trials, here)) is not None:
                print(note)
        inputs = check_inputs(the_plan.specs, the_plan.backbones, the_plan.datasets, the_plan.sweep.source)
        print(inputs.describe(with_downloads=False))
        if args.calibration is not None:
            print(describe_estimate(_estimate(args, the_plan), str(args.calibration)))
        return 0
    gpu_shares = None
    if args.calibration is not None:  # trials ask for the GPU share their measured memory calls for
        from ..sweep.cost.estimate import measured_gpu_shares

        gpu_shares = measured_gpu_shares(_estimate(args, the_plan))
        print(f"GPU shares from measured memory ({args.calibration}): {len(gpu_shares)} trials")
    if args.resume and args.max_concurrent_trials is not None:
        print("note: a resumed sweep keeps the max_concurrent_trials it was started with")

    from ..sweep.driver import run_sweep

    outcome = run_sweep(
        the_plan,
        address=args.address,
        resume=args.resume,
        storage_path=args.storage_path,
        tracking_uri=args.tracking_uri,
        max_concurrent_trials=args.max_concurrent_trials,
        num_cpus=args.num_cpus,
        retry_failed=args.retry_failed,
        rerun_changed=args.rerun_changed,
        verbose=args.verbose,
        progress_interval_s=args.progress_interval,
        gpu_shares=gpu_shares,
    )
    if outcome.interrupted:
        return 130
    return 0 if outcome.count("FAILED") == 0 else 1


def _estimate(args: argparse.Namespace, the_plan: SweepPlan) -> SweepEstimate:
    """The sweep's cost from a calibration file, epochs from MLflow, on the cluster shape the flags give."""
    import os

    from ..calibration.records import load_calibration
    from ..sweep.cost.epochs import DEFAULT_ASSUMED_EPOCHS, observed_epochs
    from ..sweep.cost.estimate import estimate_sweep
    from ..sweep.cost.packing import Node, cluster_nodes, gpu_nodes
    from ..sweep.cost.workload import sweep_workloads
    from ..tracking.store import resolve_tracking_uri

    sweep = the_plan.sweep
    calibration = load_calibration(args.calibration)
    workloads = sweep_workloads(the_plan)
    assumed = args.epochs or DEFAULT_ASSUMED_EPOCHS
    uri = resolve_tracking_uri(args.tracking_uri, sweep.tracking.uri, Path.cwd())
    epochs = observed_epochs(uri, sweep.experiment_name, assumed)
    nodes, cluster = [], ""
    if args.gpus is not None:
        nodes, cluster = gpu_nodes(args.gpus), f"{args.gpus} single-GPU node(s)"
    elif args.cluster is not None:
        nodes = cluster_nodes(args.cluster)
        gpus = sum(n.gpus for n in nodes)
        cluster = f"{args.cluster} at its largest ({len(nodes)} nodes, {gpus} GPUs)"
    else:  # what `vfm-ablate run` without --address would start here
        import torch

        cpus = args.num_cpus or sweep.run.num_cpus or os.cpu_count() or 1
        gpus = sweep.run.num_gpus if sweep.run.num_gpus is not None else torch.cuda.device_count()
        nodes = [Node(cpus=float(cpus), gpus=gpus)]
        cluster = f"this machine's local Ray ({cpus} CPUs, {gpus} GPUs; --gpus N / --cluster FILE for a cluster)"
    return estimate_sweep(the_plan, workloads, calibration, epochs, nodes, cluster, args.max_concurrent_trials)
