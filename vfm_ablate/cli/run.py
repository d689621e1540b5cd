"""`vfm-ablate run SWEEP.yaml`: validate a sweep file, print its trials (--dry-run) or run them on Ray Tune."""

from __future__ import annotations

import argparse
from pathlib import Path


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
    p.add_argument("--max-concurrent-trials", type=int, help="cap on trials running at once")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (ignored with --address)")
    p.add_argument("--verbose", action="store_true", help="show Ray's and the trials' own log output")
    p.add_argument(
        "--progress-interval",
        type=float,
        metavar="SECONDS",
        help="without a terminal (logs, Slurm): at most one epoch line per running trial every SECONDS "
        "(default: the sweep's run.progress_interval_s, 30)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..sweep.describe import describe_plan
    from ..sweep.plan import plan
    from ..sweep.spec import load_sweep

    sweep = load_sweep(args.sweep)
    if args.max_concurrent_trials is not None and args.max_concurrent_trials < 1:
        raise ConfigError(f"--max-concurrent-trials must be at least 1, got {args.max_concurrent_trials}")
    if args.rerun_changed and not args.resume:
        raise ConfigError("--rerun-changed goes with --resume (a fresh sweep has nothing to re-run)")
    if args.dry_run:
        from ..sweep.inputs import check_inputs

        the_plan = plan(sweep)
        print(describe_plan(sweep, the_plan))
        specs = [t.spec for t in the_plan.trials]
        print(check_inputs(specs, sweep.backbones, sweep.datasets, sweep.source).describe(with_downloads=False))
        return 0
    if args.resume and args.max_concurrent_trials is not None:
        print("note: a resumed sweep keeps the max_concurrent_trials it was started with")

    from ..sweep.driver import run_sweep

    outcome = run_sweep(
        sweep,
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
    )
    if outcome.interrupted:
        return 130
    return 0 if outcome.count("FAILED") == 0 else 1
