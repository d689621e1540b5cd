"""Overhead of running N demo trials through Ray Tune vs calling the trial engine N times in a loop.

Usage: python benchmarks/bench_ray_overhead.py [--trials 16] [--epochs N (default: the demo's)] [--repeats 3]

Each mode runs in a fresh Python process and is timed end to end from the parent (interpreter start, imports,
Ray start-up and shutdown included), on the same trials (sweeps/demo.yaml: tiny random-init ViTs, synthetic
128 px images resized to 64 px, frozen and LoRA, single and paired data). Every trial runs single-threaded
(OMP_NUM_THREADS=1) in every mode, so the comparison measures the sweep machinery, not torch's thread pool
(which, on a busy 2-core machine, can make a 2-thread trial 10x slower than a 1-thread one):

  loop         run_trial(spec) for each trial, one after the other, in one process
  ray-1        vfm-ablate's Ray Tune path, one trial at a time (per-epoch tune.report + checkpoint, trial
               records, actors reused), MLflow off: the cost of Ray itself                           <- the ratio
  ray-2+mlflow the demo's configuration: two trials at a time, MLflow on (what Ray buys on 2 cores)

Each mode runs `--repeats` times, the order of the modes rotated between runs; every figure is printed as the
median with its min - max. The child processes also report where the time went (imports, Ray start, first trial
start, time inside tune.report/checkpointing); the closing lines are computed from these numbers (what
dominates, whether the difference exceeds the run-to-run spread), not fixed text. Ratio = ray-1 wall / loop wall.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
    ray.init(address="local", num_cpus=max(cpus, concurrent), include_dashboard=False, log_to_driver=False)
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
    outcome = run_sweep(plan(sweep), storage_path=str(work / "ray_results"), workdir=work, out=open(os.devnull, "w"))
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
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode (medians and min - max are printed)")
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
        f"{args.trials} demo trials ({epochs} epochs), {os.cpu_count()} CPUs, 1 thread per trial; each mode in a "
        f"fresh process, {args.repeats} runs per mode, the order of the modes rotated between runs",
        flush=True,
    )
    walls: dict[str, list[float]] = {mode: [] for mode in MODES}
    reports: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for rep in range(args.repeats):
        for mode in MODES[rep % len(MODES) :] + MODES[: rep % len(MODES)]:
            wall, report = run_child(mode, args)
            walls[mode].append(wall)
            reports[mode].append(report)
            print(f"  run {rep + 1} {mode:<13s} wall {wall:6.1f} s", flush=True)
    print()
    for mode in MODES:
        print(f"{mode:13s} " + " | ".join(describe_mode(mode, walls[mode], reports[mode])))
    for line in interpret(walls, reports, args.trials):
        print(line)
    return 0


MODES = ["loop", "ray-1", "ray-2+mlflow"]


def med(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], unit: str = " s", digits: int = 1) -> str:
    """median (min - max): every figure this script prints about a mode is over its repeats."""
    return f"{med(values):.{digits}f}{unit} ({min(values):.{digits}f} - {max(values):.{digits}f})"


def describe_mode(mode: str, walls: list[float], reports: list[dict]) -> list[str]:
    """One line of medians (min - max over the runs) for a mode."""

    def each(key: str) -> list[float]:
        return [r[key] for r in reports]

    bodies = [sum(r["trial_bodies_s"]) for r in reports]
    parts = [f"wall {spread(walls)}", f"imports {spread(each('imports_s'))}"]
    if mode != "loop":
        parts += [
            f"ray.init {spread(each('ray_init_s'))}",
            f"first trial body starts {spread(each('first_trial_start_s'))} in",
            f"ray.shutdown {spread(each('ray_shutdown_s'))}",
        ]
    parts.append(f"trial bodies {spread(bodies)}")
    if mode != "loop":
        what = "tune.report + checkpoints" + (" + MLflow" if "mlflow" in mode else "")
        parts.append(f"of which {what} {spread(each('reporting_s'), digits=2)}")
    return parts


def interpret(walls: dict[str, list[float]], reports: dict[str, list[dict]], trials: int) -> list[str]:
    """What the numbers say, derived from them: the ratio and its spread, whether the difference exceeds the
    run-to-run noise, where Ray's time goes, and the trial work at which the one-at-a-time ratio drops to 1.15."""
    loop, ray1, ray2 = (med(walls[m]) for m in MODES)
    pairs = [r / lp for r, lp in zip(walls["ray-1"], walls["loop"])]  # runs of the same repeat, same load
    lines = [
        f"ratio ray-1 / loop = {ray1 / loop:.2f} of the medians (per run {min(pairs):.2f} - {max(pairs):.2f}); "
        f"ray-2+mlflow / loop = {ray2 / loop:.2f}"
    ]
    noise = max(max(w) - min(w) for w in (walls["loop"], walls["ray-1"]))
    difference = ray1 - loop
    if abs(difference) <= noise:
        lines.append(
            f"ray-1 and the loop differ by {difference:+.1f} s, within the run-to-run spread of either "
            f"({noise:.1f} s): no overhead of Ray measurable at this size"
        )
    else:
        lines.append(f"ray-1 takes {difference:+.1f} s against the loop, beyond the run-to-run spread ({noise:.1f} s)")

    def ray1_med(key: str) -> float:
        return med([r[key] for r in reports["ray-1"]])

    loop_imports = med([r["imports_s"] for r in reports["loop"]])
    worker_start = ray1_med("first_trial_start_s") - loop_imports  # the loop pays the imports in-process too
    fixed = ray1_med("ray_init_s") + ray1_med("ray_shutdown_s") + worker_start
    per_trial = (ray1_med("reporting_s") + ray1_med("between_trials_s")) / trials
    body_loop = med([sum(r["trial_bodies_s"]) for r in reports["loop"]])
    body_ray = med([sum(r["trial_bodies_s"]) for r in reports["ray-1"]])
    lines.append(
        f"where ray-1's time goes (medians): fixed {fixed:.1f} s per launch (ray.init {ray1_med('ray_init_s'):.1f} s, "
        f"shutdown {ray1_med('ray_shutdown_s'):.1f} s, first worker {worker_start:.1f} s beyond the "
        f"{loop_imports:.1f} s of imports the loop pays too); per trial {per_trial:.2f} s "
        f"(tune.report + checkpoints {ray1_med('reporting_s') / trials:.2f} s, between trials "
        f"{ray1_med('between_trials_s') / max(trials - 1, 1):.2f} s), {per_trial * trials:.1f} s for {trials}; "
        f"trial bodies {body_ray - body_loop:+.1f} s against the loop's"
    )
    total_per_trial = per_trial * trials
    unexplained = difference - fixed - total_per_trial - (body_ray - body_loop)
    lines.append(
        f"{'fixed start-up' if fixed >= total_per_trial else 'per-trial machinery'} dominates; "
        f"{unexplained:+.1f} s of the difference is not accounted for by these parts"
        + (" (within the run-to-run spread)" if abs(unexplained) <= noise else "")
    )
    share = per_trial / (body_loop / trials)  # per-trial machinery as a share of one trial's work
    if share < 0.15:
        break_even = fixed / (0.15 - share)
        lines.append(
            f"with {100 * share:.1f} % per-trial cost, the one-at-a-time ratio falls below 1.15 once a launch holds "
            f"more than ~{break_even:.0f} s of trial work (here {body_loop:.0f} s)"
        )
    else:
        lines.append(f"the per-trial machinery alone costs {100 * share:.0f} % of a trial: the ratio stays above 1.15")
    verdict = "faster" if ray2 < loop else "slower"
    lines.append(f"two trials at a time with MLflow (the demo) is {verdict} than the loop: x{ray2 / loop:.2f}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
