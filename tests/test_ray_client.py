"""`--address ray://HOST:10001` (Ray Client), as docs/cluster.md documents it: a Ray head started the way a cluster
starts it (`ray start --head` with a client server, here on 127.0.0.1), and a sweep run through the client from
this process. The head and everything it started are stopped at the end (by process, never `ray stop`, which would
end every Ray on the machine)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sweep_helpers import TINY_DATA, stop_process_tree, tiny_base

ray = pytest.importorskip("ray")
pytest.importorskip("grpc", reason="Ray Client needs ray[client] (pyproject.toml installs it)")

pytestmark = pytest.mark.slow(seconds=80)
REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[str]:
    """A Ray head with a client server on 127.0.0.1; yields its `ray://` address."""
    port, client_port = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="vfmray-", dir="/tmp")  # Ray's socket paths must stay short
    ray_cli = Path(sys.executable).with_name("ray")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_ADDRESS", None)
    # token authentication, set explicitly as docs/cluster.md says (Ray 2.60's default-on token mode does not reach
    # the client server's per-client processes); `ray start` generates the token when there is none
    env["RAY_AUTH_MODE"] = "token"
    log = open(tmp_path / "head.log", "wb")
    head = subprocess.Popen(
        [str(ray_cli if ray_cli.exists() else "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", f"--ray-client-server-port={client_port}", "--num-cpus=2", "--num-gpus=0",
         "--include-dashboard=false", f"--temp-dir={temp_dir}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not listening(client_port):
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Ray client server did not come up"
            time.sleep(0.5)
        yield f"ray://127.0.0.1:{client_port}"
    finally:
        stop_process_tree(head, grace_s=5)  # some of the head's processes outlive a SIGTERM (30 s wasted): 5 s
        log.close()
        for log_file in sorted(Path(temp_dir).glob("session_latest/logs/ray_client_server*.err")):
            print(f"--- {log_file.name}:\n{log_file.read_text(errors='replace')[-2000:]}")  # shown if the test failed
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_sweep_runs_through_ray_client(ray_head: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vfm_ablate.sweep.driver import run_sweep
    from vfm_ablate.sweep.plan import plan
    from vfm_ablate.sweep.spec import parse_sweep

    sweep = parse_sweep(
        {
            "name": "client",
            "base": tiny_base({"max_epochs": 1}),
            "datasets": {"sa": TINY_DATA},
            "resources": {"gpu": 0},
        },
        tmp_path / "client.yaml",
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("RAY_AUTH_MODE", "")  # unset as for a new user: the driver turns token mode on for the client
    outcome = run_sweep(
        plan(sweep), address=ray_head, storage_path=str(tmp_path / "results"), tracking_uri=uri, workdir=tmp_path
    )
    assert not ray.is_initialized()  # disconnected: the client session was the driver's own
    assert [t.status for t in outcome.trials] == ["FINISHED"]
    assert all(0.0 <= t.metrics["iou_fg/sa"] <= 1.0 for t in outcome.trials)
    records = sorted(p.parent.name for p in (tmp_path / "results" / "client" / "trials").glob("*/result.json"))
    assert records == sorted(t.trial_id for t in outcome.trials)
