"""How fast a sweep file expands into trials: `plan()` per combination, and the whole `run --dry-run` in-process.

Usage: python benchmarks/bench_plan.py [--sizes 1000 20000 200000] [--repeats 3]

Each size is a grid of `optim.lr` x `optim.weight_decay` x `optim.patience` x `regime` (frozen / lora) x
`lora.rank` (collapsed for frozen) over the tiny test backbone and a synthetic dataset: every combination is
validated, collapsed, hashed and de-duplicated, as in a real sweep. Figures are CPU seconds (process time), so a
machine busy with other jobs shows what an idle one would, with wall time beside them; each is the median of
`--repeats` runs with its min - max. A grid above run.max_trials (10,000) is refused before expansion unless the
sweep file raises it (as this benchmark does).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml


def grid(n: int) -> dict:
    """Axes whose product is about n combinations (half of them collapse: lora.rank does not apply to frozen)."""
    side = max(1, round((n / 4) ** (1 / 3)))
    return {
        "optim.lr": [round(1e-4 * (i + 1), 6) for i in range(side)],
        "optim.weight_decay": [round(0.01 * i, 4) for i in range(side)],
        "optim.patience": list(range(1, side + 1)),
        "regime": ["frozen", "lora"],
        "lora.rank": [8, 16],
    }


def sweep_file(folder: Path, n: int) -> Path:
    data = {
        "name": f"bench_plan_{n}",
        "base": {"backbone": "tiny_vit_p14", "weights": "random", "device": "cpu", "data": {"train": ["synthetic_a"]}},
        "axes": grid(n),
        "resources": {"gpu": 0},
        "run": {"max_trials": 10 * n},
        "tracking": {"enabled": False},
    }
    path = folder / f"bench_{n}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def timed(fn: object) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()  # type: ignore[operator]
    return time.process_time() - cpu, time.perf_counter() - wall


def spread(values: list[float], per: int, unit: float = 1e3) -> str:
    v = [x / per * unit for x in values]
    return f"{statistics.median(v):.3f} ({min(v):.3f} - {max(v):.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from vfm_ablate.cli import main as cli
    from vfm_ablate.sweep.plan import load_plan, plan
    from vfm_ablate.sweep.spec import load_sweep

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        cli(["run", str(sweep_file(Path(tmp), 8)), "--dry-run"])  # imports and first-use caches, untimed
    print(f"{'combinations':>12} {'trials':>7}  {'plan: CPU ms / combination':>28}  {'wall ms / combination':>24}  "
          f"{'dry-run CPU s':>14}")  # fmt: skip
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            path = sweep_file(Path(tmp), n)
            sweep = load_sweep(path)
            result = plan(sweep)
            cpu, wall = zip(*(timed(lambda: plan(sweep)) for _ in range(args.repeats)))
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                dry_cpu, _ = timed(lambda: cli(["run", str(path), "--dry-run"]))
            assert load_plan(path).num_trials == result.num_trials
            print(
                f"{result.grid_points:>12} {result.num_trials:>7}  {spread(list(cpu), result.grid_points):>28}  "
                f"{spread(list(wall), result.grid_points):>24}  {dry_cpu:>14.1f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
