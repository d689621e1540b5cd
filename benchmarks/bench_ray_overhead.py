"""Overhead of running N demo trials through Ray Tune vs calling the trial engine N times in a loop.

Usage: python benchmarks/bench_ray_overhead.py [--trials 16] [--epochs N (default: the demo's)]

Each mode runs in a fresh Python process and is timed end to end from the parent (interpreter start, imports,
Ray start-up and shutdown included), on the same trials (sweeps/demo.yaml: tiny random-init ViTs, synthetic
128 px images resized to 64 px, frozen and LoRA, single and paired data). Every trial runs single-threaded
(OMP_NUM_THREADS=1) in every mode, so the comparison measures the sweep machinery, not torch's thread pool
(which, on a busy 2-core machine, can make a 2-thread trial 10x slower than a 1-thread one):

  loop         run_trial(spec) for each trial, one after the other, in one process
  ray-1        vfm-ablate's Ray Tune path, one trial at a time (per-epoch tune.report + checkpoint, trial
               records, actors reused), MLflow off: the cost of Ray itself                           <- the ratio
  ray-2+mlflow the demo's configuration: two trials at a time, MLflow on (what Ray buys on 2 cores)

The child processes also report where the time went (imports, Ray start, first trial start, time inside
tune.report/checkpointing), so the output says what dominates. Ratio = ray-1 wall time / loop wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _trial_dicts(n: int, epochs: int | None) -> list[dict]:
    """The first n demo trials (distinct trial ids), with the demo's settings (and `epochs` if given)."""
    from vfm_ablate.sweep.plan import plan
    from vfm_ablate.sweep.spec import load_sweep

    demo = load_sweep(REPO / "sweeps" / "demo.yaml")
    trials = plan(demo).trials
    if n > len(trials):
        raise SystemExit(f"--trials {n}: the demo sweep has {len(trials)} trials")
    out = []
    for t in trials[:n]:
        spec = t.spec.model_dump(mode="json")
        if epochs is not None:
            spec["optim"]["max_epochs"] = epochs
        out.append(spec)
    return out


def child_loop(n: int, epochs: int | None, work: Path) -> dict:
    t0 = time.perf_counter()
    from vfm_ablate.config import TrialSpec
    from vfm_ablate.trial import run_trial

    imported = time.perf_counter()
    bodies = []
    for i, data in enumerate(_trial_dicts(n, epochs)):
        start = time.perf_counter()
        run_trial(TrialSpec.model_validate(data), work / f"trial{i}")
        bodies.append(time.perf_counter() - start)
    return {"imports_s": imported - t0, "trial_bodies_s": bodies}


def child_ray(n: int, epochs: int | None, work: Path, concurrent: int, tracking: bool) -> dict:
    t0 = time.perf_counter()
    import ray

    from vfm_ablate.config import TrialSpec
    from vfm_ablate.sweep.driver import run_sweep
    from vfm_ablate.sweep.plan import plan
    from vfm_ablate.sweep.spec import parse_sweep
    from vfm_ablate.sweep.store import TrialStore

    imported = time.perf_counter()
    cpus = os.cpu_count() or 2
    ray.init(num_cpus=max(cpus, concurrent), include_dashboard=False, log_to_driver=False)
    ray_up = time.perf_counter()
    specs = _trial_dicts(n, epochs)
    sweep = parse_sweep(
        {
            "name": "bench",
            "base": specs[0],
            "axes": [_pin(s) for s in specs],  # exactly these trials, one single-point grid each
            "resources": {"cpu": 1, "gpu": 0},
            "run": {"max_concurrent_trials": concurrent},
            "tracking": {"enabled": tracking, "uri": f"sqlite:///{work / 'mlflow.db'}"},
        },
        "bench.yaml",
    )
    assert [t.trial_id for t in plan(sweep).trials] == [TrialSpec.model_validate(s).trial_id() for s in specs]
    fit_start = time.perf_counter()
    wall_clock_fit_start = time.time()
    outcome = run_sweep(sweep, storage_path=str(work / "ray_results"), workdir=work, out=open(os.devnull, "w"))
    fit_end = time.perf_counter()
    ray.shutdown()
    down = time.perf_counter()
    store = TrialStore(outcome.store_root)
    records = [a for t in outcome.trials for a in store.attempts(t.trial_id)]
    first_start = min(a["start"] for a in records) - wall_clock_fit_start
    assert outcome.count("FINISHED") == n, [t.status for t in outcome.trials]
    return {
        "imports_s": imported - t0,
        "ray_init_s": ray_up - imported,
        "first_trial_start_s": first_start,
        "run_sweep_s": fit_end - fit_start,
        "ray_shutdown_s": down - fit_end,
        "trial_bodies_s": sorted(a["end"] - a["start"] for a in records),
        "reporting_s": sum(a["reporting_s"] for a in records),
        # one trial at a time: the idle time between one trial body's end and the next one's start
        "between_trials_s": _gaps(records) if concurrent == 1 else None,
    }


def _gaps(records: list[dict]) -> float:
    spans = sorted((a["start"], a["end"]) for a in records)
    return sum(max(0.0, nxt - end) for (_, end), (nxt, _) in zip(spans, spans[1:]))


def _pin(spec: dict) -> dict:
    """A one-point grid that sets every top-level setting of one trial."""
    return {key: [value] for key, value in spec.items()}


def run_child(mode: str, args: argparse.Namespace) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{mode}-") as work:
        cmd = [sys.executable, __file__, "--child", mode, "--trials", str(args.trials), "--work", work]
        if args.epochs is not None:
            cmd += ["--epochs", str(args.epochs)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work, env=env)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{mode} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")][-1]
        return wall, json.loads(line[len("BENCH ") :])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--child", choices=["loop", "ray-1", "ray-2+mlflow"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        if args.child == "loop":
            report = child_loop(args.trials, args.epochs, args.work)
        elif args.child == "ray-1":
            report = child_ray(args.trials, args.epochs, args.work, concurrent=1, tracking=False)
        else:
            report = child_ray(args.trials, args.epochs, args.work, concurrent=2, tracking=True)
        print("BENCH " + json.dumps(report))
        return 0

    epochs = args.epochs or "the demo's"
    print(
        f"{args.trials} demo trials ({epochs} epochs), {os.cpu_count()} CPUs, 1 thread per trial; "
        "each mode in a fresh process"
    )
    results = {}
    for mode in ("loop", "ray-1", "ray-2+mlflow"):
        wall, report = run_child(mode, args)
        results[mode] = (wall, report)
        bodies = report["trial_bodies_s"]
        parts = [f"wall {wall:6.1f} s", f"imports {report['imports_s']:.1f} s"]
        if "ray_init_s" in report:
            parts += [
                f"ray.init {report['ray_init_s']:.1f} s",
                f"first trial body starts {report['first_trial_start_s']:.1f} s into the run",
                f"ray.shutdown {report['ray_shutdown_s']:.1f} s",
            ]
        parts.append(f"trial bodies {sum(bodies):.1f} s (median {sorted(bodies)[len(bodies) // 2]:.1f} s)")
        if "reporting_s" in report:
            parts.append(
                f"of which tune.report + checkpoints{' + MLflow' if 'mlflow' in mode else ''} "
                f"{report['reporting_s']:.1f} s"
            )
        print(f"{mode:13s} " + " | ".join(parts), flush=True)
    loop_wall, loop = results["loop"]
    ray_wall, ray1 = results["ray-1"]
    ratio = ray_wall / loop_wall
    print(f"ratio ray-1 / loop = {ratio:.3f}   (ray-2+mlflow / loop = {results['ray-2+mlflow'][0] / loop_wall:.3f})")
    worker_start = ray1["first_trial_start_s"] - loop["imports_s"]  # the loop pays the imports in-process
    print(
        f"Ray's own costs in ray-1: ray.init {ray1['ray_init_s']:.1f} s + ray.shutdown {ray1['ray_shutdown_s']:.1f} s "
        f"(fixed), first worker start {ray1['first_trial_start_s']:.1f} s of which ~{loop['imports_s']:.1f} s are the "
        f"imports the loop pays too (net ~{worker_start:.1f} s), "
        f"and {ray1['reporting_s'] / args.trials:.2f} s per trial "
        f"in tune.report + per-epoch checkpoints ({100 * ray1['reporting_s'] / sum(ray1['trial_bodies_s']):.1f} % of "
        f"the trial bodies), {ray1['between_trials_s'] / max(args.trials - 1, 1):.2f} s between consecutive trials "
        f"({ray1['between_trials_s']:.1f} s in all: Tune ends one trial, saves state, resets the actor, starts the "
        "next); the rest is run-to-run noise of the trial bodies themselves"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
