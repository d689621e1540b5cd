"""cluster-onprem.yaml, run for real: Ray's cluster launcher (`local` provider, over SSH) on two machines made of
network namespaces joined by a veth pair (head 10.200.0.1, worker 10.200.0.2), each with its own sshd, home folder
and /tmp, sharing one filesystem as on-premises machines do. The config is changed only on its CHANGE lines.

`ray up` starts Ray and MLflow on the head, and the head's autoscaler starts the worker over SSH; `ray exec` runs a
small sweep whose trials each take a whole node, so they run on both; `ray down` stops Ray on the head, and MLflow
with it. Everything runs from inside the head's namespace, as from a laptop on the cluster's network.
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
from tests.readme_recipes import REPO, adapt
from tests.sweep_helpers import TINY_DATA, tiny_base
from vfm_ablate.tracking.tags import NODE_IP_TAG, ROLE_TAG, ROLE_TRIAL, TRIAL_ID_TAG

pytestmark = [pytest.mark.slow(seconds=160), pytest.mark.timeout(1500)]

HEAD, WORKER = "10.200.0.1", "10.200.0.2"
BIN = Path(sys.executable).parent
SSHD_CONFIG = """\
Port 22
HostKey {root}/hostkey
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PidFile none
"""


def unavailable() -> str | None:
    missing = [tool for tool in ("/usr/sbin/sshd", "ssh", "rsync", "ssh-keygen") if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} (Debian: openssh-server, openssh-client, rsync; .ci/run installs them)"
    return netns.unavailable()


@pytest.fixture
def sandbox() -> Iterator[netns.Sandbox]:
    yield from netns.sandbox_or_skip(unavailable())


def machine_mounts(machine: Path) -> netns.Binds:
    """A machine's own home folder (over the account's, /root: the launcher writes ~/.bashrc, keys and configs there)
    and /tmp (Ray's session folders, the launcher's state). Python's own installation stays visible where the venv
    points to it, also when it lives in the real home (pyenv)."""
    python = Path(sys.base_prefix).resolve()
    binds: netns.Binds = [(machine / "root", Path("/root")), (machine / "tmp", Path("/tmp"))]
    home = Path.home().resolve()
    if python.is_relative_to(home):
        (machine / "python").mkdir()
        return [(python, machine / "python"), *binds, (machine / "python", Path("/root") / python.relative_to(home))]
    return binds


def user_config(root: Path, key: Path) -> str:
    """cluster-onprem.yaml with a user's edits: the machines, the account, the shared paths."""
    text = (REPO / "cluster-onprem.yaml").read_text()
    return adapt(
        text,
        {
            "  head_ip: 10.0.0.1 ": f"  head_ip: {HEAD} ",
            "  worker_ips: [10.0.0.2, 10.0.0.3] ": f"  worker_ips: [{WORKER}] ",
            "  ssh_user: YOUR-USER ": "  ssh_user: root ",
            "  ssh_private_key: ~/.ssh/id_ed25519 ": f"  ssh_private_key: {key} ",
            "min_workers: 2 ": "min_workers: 1 ",
            "max_workers: 2 ": "max_workers: 1 ",
            "'export VFM_ABLATE_REPO=/shared/vfm-ablate'": f"'export VFM_ABLATE_REPO={REPO}'",
            "'export VFM_ABLATE_WORK=/shared/vfm-runs'": f"'export VFM_ABLATE_WORK={root / 'shared'}'",
            "'export VFM_ABLATE_DATA_ROOT=/shared/em-data'": f"'export VFM_ABLATE_DATA_ROOT={root / 'data'}'",
            "'export HF_HOME=/shared/hf-cache'": f"'export HF_HOME={root / 'shared' / 'hf'}'",
        },
    )


def test_ray_up_exec_down_on_two_ssh_machines(sandbox: netns.Sandbox) -> None:
    root = Path(tempfile.mkdtemp(prefix="vfm-onprem-", dir="/var/tmp"))  # not under /tmp: each machine has its own
    try:
        run_onprem(sandbox, root)
    finally:
        sandbox.close()
        shutil.rmtree(root, ignore_errors=True)


def run_onprem(sandbox: netns.Sandbox, root: Path) -> None:
    head_ns, worker_ns = sandbox.namespace("head"), sandbox.namespace("worker")
    sandbox.link(head_ns, HEAD, worker_ns, WORKER, default_route=True)
    for folder in ("shared", "laptop/home/.ssh", "laptop/tmp", "head/root", "head/tmp", "worker/root", "worker/tmp"):
        (root / folder).mkdir(parents=True)
    key = root / "laptop" / "home" / ".ssh" / "id_ed25519"
    for path in (key, root / "hostkey"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=60)
    (root / "sshd_config").write_text(SSHD_CONFIG.format(root=root))
    for machine in ("head", "worker"):
        ssh = root / machine / "root" / ".ssh"
        ssh.mkdir(mode=0o700)
        (ssh / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
        (ssh / "authorized_keys").chmod(0o600)
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder (what the package's service makes)
    laptop = {
        "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": str(root / "laptop" / "home"),
        "LANG": "C.UTF-8",
        "USER": "root",
        "RAY_UP_enable_autoscaler_v2": "0",  # as cluster-onprem.yaml says: v2 never starts the local provider's workers
    }
    token = subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=laptop, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert token.returncode == 0, token.stderr
    for ns, addr, machine in ((head_ns, HEAD, "head"), (worker_ns, WORKER, "worker")):
        binds = machine_mounts(root / machine)
        sshd = ["/usr/sbin/sshd", "-D", "-e", "-f", str(root / "sshd_config"), "-o", f"ListenAddress={addr}"]
        sandbox.spawn(ns, sshd, {"PATH": laptop["PATH"]}, root / f"sshd-{machine}.log", binds=binds)
    config = root / "laptop" / "cluster-onprem.yaml"
    config.write_text(user_config(root, key))
    yaml.safe_load(config.read_text())
    sweep = root / "shared" / "onprem.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "name": "onprem",
                "base": tiny_base({"max_epochs": 1}),
                "axes": {"seed": [0, 1, 2, 3]},
                "datasets": {"sa": TINY_DATA},
                "resources": {"cpu": 2, "gpu": 0},  # a whole machine each: two at once means one on each machine
                "run": {"max_concurrent_trials": 2},
            }
        )
    )
    binds = [(root / "laptop" / "tmp", Path("/tmp"))]

    def launcher(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        done = sandbox.run_apart(head_ns, [str(BIN / "ray"), *args], laptop, timeout=timeout, binds=binds)
        logs = "\n".join(p.read_text(errors="replace")[-1500:] for p in root.glob("*.log"))
        assert done.returncode == 0, f"ray {' '.join(args)}:\n{done.stdout[-5000:]}\n{done.stderr[-3000:]}\n{logs}"
        return done

    started = time.monotonic()
    launcher("up", "-y", "--no-config-cache", str(config))
    up_s = time.monotonic() - started
    probe = (
        "python -c \"import ray, sys, time; ray.init(address='auto', logging_level='ERROR'); "
        "[time.sleep(2) for _ in range(150) if sum(n['Alive'] for n in ray.nodes()) < 2]; "
        "sys.exit(sum(n['Alive'] for n in ray.nodes()) < 2)\""
    )
    launcher("exec", str(config), probe)  # the head's autoscaler has started the worker over SSH
    workers_s = time.monotonic() - started - up_s
    launcher("exec", str(config), f"vfm-ablate run {sweep} --address auto --resume")
    sweep_s = time.monotonic() - started - up_s - workers_s
    launcher("down", "-y", str(config))
    down = time.monotonic()
    machines = sandbox.services[:2]  # the two sshd trees: everything the launcher started runs inside them
    left: list[str] = []
    while time.monotonic() < down + 180:  # a worker's raylet exits once it has lost the head (about 30 s)
        left = [
            line
            for machine in machines
            for line in netns.Sandbox.run_inside(machine, ["ps", "-eo", "args"], laptop, 60).stdout.splitlines()[1:]
            if not line.startswith(("sshd", "/usr/sbin/sshd", "ps "))
        ]
        if not left:
            break
        time.sleep(5)
    assert not left, left  # `ray down` leaves no Ray and no MLflow process on any machine
    down_s = time.monotonic() - down

    trials = root / "shared" / "ray_results" / "onprem" / "trials"
    results = {p.parent.name: json.loads(p.read_text()) for p in trials.glob("*/result.json")}
    assert len(results) == 4
    split = Counter(r["node_ip"] for r in results.values())
    assert set(split) == {HEAD, WORKER}, split
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'shared' / 'mlflow.db'}")  # the store of the server the head ran
    experiment = client.get_experiment_by_name("onprem")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get(ROLE_TAG) == ROLE_TRIAL]
    assert sorted((r.data.tags[TRIAL_ID_TAG], r.data.tags[NODE_IP_TAG]) for r in runs) == sorted(
        (tid, r["node_ip"]) for tid, r in results.items()
    )
    print(
        f"on premises: ray up {up_s:.0f} s, worker up {workers_s:.0f} s, sweep {sweep_s:.0f} s, everything stopped "
        f"{down_s:.0f} s after ray down; trials per machine {dict(split)}"
    )
