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
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
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


def _timed_python(code: str, *args: str, timeout_s: float = 300) -> float:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout_s, check=True
    )
    return float(proc.stdout.strip().splitlines()[-1])


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
    subprocess.run(
        [sys.executable, "-m", "vfm_ablate", "run", str(sweep_file), "--dry-run"],
        capture_output=True,
        timeout=300,
        check=True,
    )
    return time.perf_counter() - started
