"""Multi-node placement on an in-process Ray cluster: a head without GPUs and two workers with one logical GPU each.

Trials ask for half a GPU (pinned to `device: cpu`, the GPUs are logical), so each worker holds at most two at
once: trials must land on both workers, never on the head, and never with more GPU demand at once than exists.
One trial reads a dataset that does not exist: it is recorded as failed while the others finish.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from tests.sweep_helpers import TINY_DATA, tiny_base, write_unreadable_dataset  # noqa: E402
from vfm_ablate.sweep.driver import run_sweep  # noqa: E402
from vfm_ablate.sweep.plan import plan  # noqa: E402
from vfm_ablate.sweep.spec import parse_sweep  # noqa: E402
from vfm_ablate.sweep.store import TrialStore  # noqa: E402

pytestmark = pytest.mark.slow(seconds=35)


@pytest.fixture()
def two_gpu_workers():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    try:
        workers = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, [w.node_id for w in workers]
    finally:
        ray.shutdown()
        cluster.shutdown()


def max_concurrent(intervals: list[tuple[float, float, float]]) -> float:
    """Largest sum of `amount` over intervals (start, end, amount) that overlap in time."""
    events = sorted([(s, a) for s, _, a in intervals] + [(e, -a) for _, e, a in intervals], key=lambda x: (x[0], x[1]))
    current = peak = 0.0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def test_trials_spread_over_gpu_workers_and_a_failure_does_not_stop_the_sweep(
    two_gpu_workers: tuple[Cluster, list[str]], tmp_path: Path
) -> None:
    cluster, worker_ids = two_gpu_workers
    sweep = parse_sweep(
        {
            "name": "multinode",
            "base": tiny_base({"max_epochs": 2}),
            "axes": [
                {"regime": ["frozen", "lora"], "seed": [0, 1]},
                {"data.train": [["sa", "broken"]]},
            ],
            "datasets": {
                "sa": TINY_DATA,
                "broken": {"layout": "folder", "path": str(write_unreadable_dataset(tmp_path / "broken"))},
            },
            "resources": {"cpu": 1, "gpu": 0.5},
            "tracking": {"enabled": False},
        },
        tmp_path / "multinode.yaml",
    )
    outcome = run_sweep(plan(sweep), storage_path=str(tmp_path / "results"), workdir=tmp_path)

    statuses = {t.trial_id: t.status for t in outcome.trials}
    [failed] = [t for t in outcome.trials if t.status == "FAILED"]
    assert failed.spec.data.train == ["sa", "broken"] and "DataError" in (failed.error or "")
    assert sorted(statuses.values()) == ["FAILED", "FINISHED", "FINISHED", "FINISHED", "FINISHED"]

    store = TrialStore(outcome.store_root)
    attempts = [a for t in outcome.trials for a in store.attempts(t.trial_id)]
    assert len(attempts) == 5 and all(a["gpu"] == 0.5 for a in attempts)
    nodes = {a["node_id"] for a in attempts}
    assert nodes == set(worker_ids), "trials ran on both GPU workers and never on the GPU-less head"
    gpus = ray.cluster_resources()["GPU"]
    assert gpus == 2
    peak = max_concurrent([(a["start"], a["end"], a["gpu"]) for a in attempts])
    assert 0.5 < peak <= gpus
    assert store.result(failed.trial_id) is None


def test_on_a_cluster_without_gpus_yet_trials_wait_for_a_gpu_node(tmp_path: Path) -> None:
    """`vfm-ablate run --address` to an autoscaling cluster that starts with a CPU head only (cluster.yaml): the GPU
    asks stay, the trial waits, and it runs on the GPU node once one joins (added here as the autoscaler would)."""
    sweep_file = tmp_path / "autoscale.yaml"
    sweep_file.write_text(
        yaml.safe_dump(
            {
                "base": tiny_base({"max_epochs": 1}),
                "datasets": {"sa": TINY_DATA},
                "resources": {"cpu": 1, "gpu": 0.5},
                "tracking": {"enabled": False},
            }
        )
    )
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
    log_path = tmp_path / "driver.log"
    driver = None
    try:
        with open(log_path, "w") as log:
            driver = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "vfm_ablate",
                    "run",
                    str(sweep_file),
                    "--address",
                    cluster.address,
                    "--storage-path",
                    str(tmp_path / "results"),
                ],
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            deadline = time.monotonic() + 120
            while "no GPUs yet" not in log_path.read_text() and driver.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
            assert "no GPUs yet" in log_path.read_text(), log_path.read_text()[-3000:]
            time.sleep(5)
            trials = tmp_path / "results" / "autoscale" / "trials"
            assert not list(trials.glob("*/attempts/*.json")), "a GPU trial started on a cluster without GPUs"
            added_at = time.time()
            gpu_node = cluster.add_node(num_cpus=1, num_gpus=1)
            assert driver.wait(timeout=300) == 0, log_path.read_text()[-3000:]
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait()
        cluster.shutdown()
    [attempt_file] = list(trials.glob("*/attempts/*.json"))
    attempt = json.loads(attempt_file.read_text())
    assert attempt["status"] == "FINISHED" and attempt["gpu"] == 0.5
    assert attempt["node_id"] == gpu_node.node_id and attempt["start"] >= added_at
