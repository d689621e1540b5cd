"""A real single-node Slurm cluster for tests: Debian's slurmctld + slurmd + munge (installed by .ci/run), configured
in a temporary folder and started in a network + PID namespace of the test's own (tests/netns.py), so that the
recipe's fixed ports (Ray 6379, MLflow 5000, the Ray dashboard 8265) cannot meet another service on this machine
and everything the jobs start is removed with the cluster.

The configuration is a plain one: munge authentication, the node's real CPU count, no accounting; process tracking by
process group and no task plugin, because this machine offers no cgroup freezer (proctrack/cgroup needs one).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.netns import Sandbox

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "srun")
KILL_WAIT_S = 10  # Slurm's grace between SIGTERM and SIGKILL when a job ends or hits its time limit (default 30)

CONFIG = """\
ClusterName=vfmtest
SlurmctldHost={host}({addr})
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
AuthInfo=socket={root}/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait={kill_wait}
NodeName={host} NodeAddr={addr} CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
CGROUP_CONFIG = "CgroupPlugin=cgroup/v1\nCgroupAutomount=no\nConstrainCores=no\nConstrainRAMSpace=no\n"


def unavailable() -> str | None:
    """Why this machine cannot run a Slurm cluster for the tests (None when it can)."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"Slurm / munge not installed (no {', '.join(missing)}; .ci/run installs Debian's packages)"
    return None


@dataclass
class SlurmCluster:
    """One running cluster: run its client commands with `client`, submit with `sbatch`."""

    sandbox: Sandbox
    ns: str
    root: Path
    cpus: int
    env: dict[str, str] = field(default_factory=dict)

    def client(self, *argv: str, timeout: float = 60, env: dict[str, str] | None = None) -> str:
        done = self.sandbox.run(self.ns, list(argv), {**self.env, **(env or {})}, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}\n{self.logs()}")
        return done.stdout

    def sbatch(self, script: Path, env: dict[str, str], cwd: Path) -> int:
        """Submit `script` with `env` as the submitting shell's environment (sbatch exports it to the job)."""
        done = self.sandbox.run(self.ns, ["sbatch", "--parsable", str(script)], {**env, **self.env}, 60, cwd)
        if done.returncode != 0:
            raise RuntimeError(f"sbatch failed: {done.stderr.strip()}\n{self.logs()}")
        return int(done.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """The job's fields as `scontrol show job` prints them (JobState, ExitCode, RunTime, ...)."""
        text = self.client("scontrol", "show", "job", str(job_id))
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def wait(self, job_id: int, timeout: float) -> dict[str, str]:
        """Wait until the job has ended and Slurm is done with it (no COMPLETING); its final fields."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fields = self.job(job_id)
            if fields["JobState"] not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED"):
                return fields
            time.sleep(2)
        raise TimeoutError(f"Slurm job {job_id} still {self.job(job_id)['JobState']} after {timeout:.0f} s")

    def logs(self) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(parts)


def start_slurm(sandbox: Sandbox, timeout_s: float = 60) -> SlurmCluster:
    """Configure and start munged, slurmctld and slurmd in a new namespace; returns once the node is idle."""
    root = Path(tempfile.mkdtemp(prefix="vfm-slurm-", dir="/tmp"))  # short: munge's socket path must fit
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    host, addr, cpus = socket.gethostname(), "127.0.0.1", os.cpu_count() or 1
    (root / "slurm.conf").write_text(CONFIG.format(host=host, addr=addr, root=root, cpus=cpus, kill_wait=KILL_WAIT_S))
    (root / "cgroup.conf").write_text(CGROUP_CONFIG)
    ns = sandbox.namespace("slurm")
    sandbox.address(ns, "10.200.9.1")
    env = {"SLURM_CONF": str(root / "slurm.conf"), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    munged = (
        f"munged --foreground --force --key-file={root}/munge.key --socket={root}/munge.sock "
        f"--pid-file={root}/munged.pid --log-file={root}/munged.log --seed-file={root}/munged.seed"
    )
    daemons = f"{munged} & until [ -S {root}/munge.sock ]; do sleep 0.1; done; slurmctld -D -i & slurmd -D & wait"
    sandbox.spawn(ns, ["bash", "-c", daemons], env, root / "daemons.log")
    cluster = SlurmCluster(sandbox, ns, root, cpus, env)
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        done = sandbox.run(ns, ["sinfo", "--noheader", "--format=%t"], env, timeout=30)
        state = done.stdout.strip()
        if done.returncode == 0 and state == "idle":
            return cluster
        time.sleep(0.5)
    raise RuntimeError(f"Slurm node not idle after {timeout_s:.0f} s (state {state!r})\n{cluster.logs()}")


def remove_root(cluster: SlurmCluster) -> None:
    shutil.rmtree(cluster.root, ignore_errors=True)
