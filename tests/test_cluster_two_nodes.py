"""A real two-node Ray cluster: two network namespaces joined by a veth pair (head 10.200.0.1, worker 10.200.0.2,
addresses that exist only inside them), `ray start --head` in one and a worker in the other (one CPU each, token
authentication), an MLflow server on the head's address, and a storage folder both nodes see. A 4-trial sweep whose
trials each take a whole node (two at once: one on each) is launched from inside the head's namespace with
`vfm-ablate run --address` as soon as the MLflow server is started: the tracking pre-flight waits for it (its first
attempts are refused while the server imports MLflow).

Both namespaces share this machine's host name, as containers and cloned VMs often do: only the node address tells
the nodes apart, so every trial must record it (attempt record, result, MLflow tag) beside the host name.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests import netns
from tests.sweep_helpers import TINY_DATA, tiny_base
from vfm_ablate.tracking.tags import HOST_TAG, NODE_IP_TAG, ROLE_TAG, ROLE_TRIAL, TRIAL_ID_TAG

pytestmark = [pytest.mark.slow(seconds=60), pytest.mark.timeout(1200)]

HEAD, WORKER = "10.200.0.1", "10.200.0.2"
RAY_PORT, MLFLOW_PORT = 6379, 5000
TRIALS = 4
BIN = Path(sys.executable).parent


@pytest.fixture
def sandbox() -> Iterator[netns.Sandbox]:
    yield from netns.sandbox_or_skip(netns.unavailable())


def wait_for_nodes(head: subprocess.Popen[bytes], env: dict[str, str], count: int, timeout_s: float) -> None:
    """Poll from the head's namespace until `count` Ray nodes are alive (as README's Slurm recipe does)."""
    probe = (
        f"import ray, sys; ray.init(address='{HEAD}:{RAY_PORT}', logging_level='ERROR'); "
        f"sys.exit(sum(n['Alive'] for n in ray.nodes()) < {count})"
    )
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        done = netns.Sandbox.run_inside(head, [str(BIN / "python"), "-c", probe], env, timeout=120)
        if done.returncode == 0:
            return
        last = done.stderr[-2000:]
        time.sleep(2)
    raise AssertionError(f"{count} Ray nodes not alive after {timeout_s:.0f} s: {last}")


def test_trials_run_on_both_nodes_and_record_their_node_address(sandbox: netns.Sandbox, tmp_path: Path) -> None:
    head_ns, worker_ns = sandbox.namespace("head"), sandbox.namespace("worker")
    sandbox.link(head_ns, HEAD, worker_ns, WORKER)
    machines = Path(tempfile.mkdtemp(prefix="vfm-2n-", dir="/tmp"))  # each node's own /tmp (short: socket paths)
    try:
        shared = tmp_path / "shared"  # the storage path and the MLflow store, seen by both nodes
        home = tmp_path / "home"  # one account: the same ~/.ray/auth_token on both nodes
        for folder in (shared, home, machines / "head", machines / "worker"):
            folder.mkdir(parents=True)
        sweep = shared / "twonodes.yaml"
        sweep.write_text(
            yaml.safe_dump(
                {
                    "name": "twonodes",
                    "base": tiny_base({"max_epochs": 1}),
                    "axes": {"seed": list(range(TRIALS))},
                    "datasets": {"sa": TINY_DATA},
                    "resources": {"cpu": 1, "gpu": 0},  # a whole node each: two at once means one on each node
                    "run": {"max_concurrent_trials": 2},
                }
            )
        )
        base = {
            "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "RAY_AUTH_MODE": "token",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        token = subprocess.run(
            [str(BIN / "ray"), "get-auth-token", "--generate"], env=base, capture_output=True, text=True, timeout=120
        )
        assert token.returncode == 0 and (home / ".ray" / "auth_token").is_file(), token.stderr
        on_head = {**base, "TMPDIR": str(machines / "head")}
        on_worker = {**base, "TMPDIR": str(machines / "worker")}
        ray_node = [str(BIN / "ray"), "start", "--num-cpus=1", "--num-gpus=0", "--block"]

        started = time.monotonic()
        head = sandbox.spawn(
            head_ns,
            [*ray_node, "--head", f"--node-ip-address={HEAD}", f"--port={RAY_PORT}", "--include-dashboard=false"],
            on_head,
            tmp_path / "ray-head.log",
        )  # fmt: skip
        sandbox.spawn(
            worker_ns, [*ray_node, f"--address={HEAD}:{RAY_PORT}", f"--node-ip-address={WORKER}"], on_worker,
            tmp_path / "ray-worker.log",
        )  # fmt: skip
        try:
            wait_for_nodes(head, on_head, 2, timeout_s=300)
        except AssertionError as err:
            logs = {n: (tmp_path / n).read_text(errors="replace")[-1500:] for n in ("ray-head.log", "ray-worker.log")}
            raise AssertionError(f"{err}\n{logs}") from None
        cluster_up = time.monotonic() - started
        # the sweep starts before the MLflow server, which starts once the sweep's tracking pre-flight says it waits
        errors = tmp_path / "run.err"
        sandbox.spawn(
            head_ns,
            [
                "sh", "-c", f'until grep -qs "waiting for MLflow" {errors}; do sleep 0.2; done; exec "$0" "$@"',
                str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{shared / 'mlflow.db'}",
                "--artifacts-destination", str(shared / "mlartifacts"), "--host", HEAD, "--port", str(MLFLOW_PORT),
                "--workers", "1", "--uvicorn-opts=--no-access-log", "--allowed-hosts", f"{HEAD}:{MLFLOW_PORT}",
            ],
            on_head,
            tmp_path / "mlflow.log",
        )  # fmt: skip

        run = sandbox.run_inside(  # on the head node: its namespaces, its /tmp
            head,
            [
                "sh", "-c", f'exec "$@" 2> {errors}', "sh",
                str(BIN / "vfm-ablate"), "run", str(sweep), "--address", f"{HEAD}:{RAY_PORT}",
                "--storage-path", str(shared / "ray_results"), "--tracking-uri", f"http://{HEAD}:{MLFLOW_PORT}",
            ],
            {**on_head, "VFM_ABLATE_TRACKING_WAIT_S": "300"},
            timeout=900,
            cwd=tmp_path,
        )  # fmt: skip
        sweep_s = time.monotonic() - started - cluster_up
        logs = "\n".join((tmp_path / n).read_text(errors="replace")[-1500:] for n in ("mlflow.log", "ray-worker.log"))
        stderr = errors.read_text(errors="replace")
        assert run.returncode == 0, f"{run.stdout[-3000:]}\n{stderr[-3000:]}\n{logs}"
        assert f"waiting for MLflow tracking server http://{HEAD}:{MLFLOW_PORT} (" in stderr
    finally:
        sandbox.close()
        shutil.rmtree(machines, ignore_errors=True)

    trials = shared / "ray_results" / "twonodes" / "trials"
    results = {p.parent.name: json.loads(p.read_text()) for p in trials.glob("*/result.json")}
    assert len(results) == TRIALS
    attempts = [json.loads(p.read_text()) for p in trials.glob("*/attempts/*.json")]
    assert attempts and all(a["node_ip"] in (HEAD, WORKER) and a["host"] for a in attempts)
    split = Counter(r["node_ip"] for r in results.values())
    assert set(split) == {HEAD, WORKER}, split  # both nodes ran trials ...
    assert len({r["host"] for r in results.values()}) == 1  # ... under one host name: the address tells them apart
    assert len({r["node_id"] for r in results.values()}) == 2

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{shared / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("twonodes")
    runs = [
        r
        for r in client.search_runs([experiment.experiment_id], max_results=1000)
        if r.data.tags.get(ROLE_TAG) == ROLE_TRIAL
    ]
    assert len(runs) == TRIALS
    for r in runs:
        result = results[r.data.tags[TRIAL_ID_TAG]]
        assert (r.data.tags[NODE_IP_TAG], r.data.tags[HOST_TAG]) == (result["node_ip"], result["host"])
    print(
        f"two nodes: cluster up in {cluster_up:.0f} s, sweep {sweep_s:.0f} s; trials per node: "
        + ", ".join(f"{ip} {n}" for ip, n in sorted(split.items()))
    )
