"""What one launch of a sweep pays once, before and around its trials, timed in fresh processes (cold imports):
the driver reading and planning the sweep file, MLflow's store and parent run, a local Ray's start-up (one task
round trip included: a worker process) and shutdown."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

_RAY = """
import logging, time
t = time.perf_counter()
import ray
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
ray.get(ray.remote(lambda: None).remote())
ray.shutdown()
print(time.perf_counter() - t)
"""

_TRACKING = """
import sys, time
t = time.perf_counter()
from vfm_ablate.tracking.store import ensure_experiment, tracking_client
uri = "sqlite:///" + sys.argv[1]
client = tracking_client(uri)
run = client.create_run(ensure_experiment(client, "calibration", uri))
client.log_param(run.info.run_id, "calibration", "1")
client.set_terminated(run.info.run_id, "FINISHED")
print(time.perf_counter() - t)
"""


class LaunchTimingError(RuntimeError):
    """A launch step could not be timed (its process failed): the calibration notes it and goes on."""


def _timed_python(code: str, *args: str, timeout_s: float = 300) -> float:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout_s)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = " ".join(proc.stderr.strip().splitlines()[-2:])[-300:]
        raise LaunchTimingError(f"exit status {proc.returncode}: {tail}")
    return float(lines[-1])


def ray_start_s() -> float:
    """import ray, ray.init (one CPU), one task (starts a worker process), shutdown."""
    return _timed_python(_RAY)


def tracking_start_s() -> float:
    """import mlflow, create a SQLite store's schema, one run: what a launch's parent run costs."""
    with tempfile.TemporaryDirectory(prefix="vfm-calibrate-") as folder:
        return _timed_python(_TRACKING, str(Path(folder) / "mlflow.db"))


def driver_start_s(sweep_file: str | Path) -> float:
    """`vfm-ablate run SWEEP --dry-run` end to end: interpreter, imports, validating and planning the sweep."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "vfm_ablate", "run", str(sweep_file), "--dry-run"], capture_output=True, timeout=300
    )
    if proc.returncode != 0:
        raise LaunchTimingError(f"`vfm-ablate run {sweep_file} --dry-run` failed (exit status {proc.returncode})")
    return time.perf_counter() - started


def launch_costs(sweep_file: str | Path, tracked: bool, attempts: int = 2) -> tuple[dict[str, float], list[str]]:
    """Every launch timing that succeeds (each tried `attempts` times: a shared machine's Ray may fail to
    start once), and a note for each that did not."""
    steps = {"driver_start_s": lambda: driver_start_s(sweep_file), "ray_start_s": ray_start_s}
    if tracked:
        steps["tracking_start_s"] = tracking_start_s
    timed: dict[str, float] = {}
    notes: list[str] = []
    for name, step in steps.items():
        for attempt in range(attempts):
            try:
                timed[name] = step()
                break
            except (LaunchTimingError, subprocess.TimeoutExpired) as err:
                if attempt == attempts - 1:
                    notes.append(f"{name}: not measured ({err})")
    return timed, notes
