"""Network and PID namespaces for the tests that run cluster recipes for real (tests/test_cluster_*.py).

A test makes its own network namespaces (addresses such as 10.200.0.1 exist only inside them, so nothing reaches
another machine and no port can collide with a service already running here) and starts each service tree (a Slurm
cluster, a Ray node, an MLflow server) in a PID namespace of its own, through `unshare --kill-child`:

- killing the `unshare` process kills the namespace's first process, and the kernel then kills every other
  process in it, however deep (Ray's daemons, Slurm's job steps, trial workers);
- a recipe's `ray stop` sees only its own namespace's processes (it would otherwise kill every Ray on the machine);
- if the test process itself dies, the kernel kills the services too (parent-death signal).

`Sandbox.close()` kills every service it started and deletes every namespace it made (also when a test fails); a
sandbox also deletes namespaces left by test processes that no longer exist.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

PREFIX = "vfm"
_NAME = re.compile(rf"^{PREFIX}(\d+)x")
_PR_SET_PDEATHSIG = 1


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def unavailable() -> str | None:
    """Why this machine cannot run the namespace tests (None when it can)."""
    if any(shutil.which(tool) is None for tool in ("ip", "unshare", "nsenter")):
        return "needs `ip` (iproute2), `unshare` and `nsenter` (util-linux)"
    probe = f"{PREFIX}{os.getpid()}xprobe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace (`ip netns add`: {made.stderr.strip()}); needs CAP_NET_ADMIN (root)"
    try:
        pid_ns = subprocess.run(
            ["ip", "netns", "exec", probe, "unshare", "--pid", "--fork", "--mount-proc", "true"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        _ip("netns", "del", probe, check=False)
    if pid_ns.returncode != 0:
        return f"cannot make a PID namespace (`unshare --pid`: {pid_ns.stderr.strip()}); needs CAP_SYS_ADMIN (root)"
    return None


Binds = list[tuple[Path, Path]]  # (folder, where it is mounted), in order; a later one may mount into an earlier one


def _pid_namespace(argv: list[str], binds: Binds | None) -> list[str]:
    """`argv` as the first process of a new PID (and mount) namespace, with `binds` mounted first."""
    wrapped = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]
    if not binds:
        return [*wrapped, *argv]
    mounts = " && ".join(f"mkdir -p {target} && mount --bind {source} {target}" for source, target in binds)
    return [*wrapped, "bash", "-c", f'{mounts} && exec "$@"', "bash", *argv]


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process dies, so no service outlives a killed test run."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Sandbox:
    """Namespaces and service trees of one test; `close()` removes them all."""

    def __init__(self) -> None:
        self.namespaces: list[str] = []
        self.services: list[subprocess.Popen[bytes]] = []
        self._links = 0
        self._remove_stale()

    @staticmethod
    def _remove_stale() -> None:
        listed = _ip("netns", "list", check=False).stdout.split()
        for name in listed:
            match = _NAME.match(name)
            if match and not _alive(int(match.group(1))):
                _ip("netns", "del", name, check=False)

    def namespace(self, name: str) -> str:
        """A new network namespace with loopback up; its full name (unique to this test process)."""
        full = f"{PREFIX}{os.getpid()}x{name}"
        _ip("netns", "add", full)
        self.namespaces.append(full)
        _ip("-n", full, "link", "set", "lo", "up")
        return full

    def _pair(self) -> tuple[str, str]:
        self._links += 1
        base = f"v{os.getpid() % 100000}{self._links}"  # interface names: at most 15 characters
        return f"{base}a", f"{base}b"

    def link(
        self, ns_a: str, addr_a: str, ns_b: str, addr_b: str, prefix: int = 24, default_route: bool = False
    ) -> None:
        """A veth pair between two namespaces: `addr_a` in `ns_a`, `addr_b` in `ns_b`, on one /prefix network.
        `default_route`: each namespace routes everything else through the pair too (nothing answers there), as a
        machine on a real network does; Ray then finds the node's address by its route, as it would there."""
        end_a, end_b = self._pair()
        _ip("link", "add", end_a, "type", "veth", "peer", "name", end_b)
        for ns, end, addr in ((ns_a, end_a, addr_a), (ns_b, end_b, addr_b)):
            _ip("link", "set", end, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{addr}/{prefix}", "dev", end)
            _ip("-n", ns, "link", "set", end, "up")
            if default_route:
                _ip("-n", ns, "route", "add", "default", "dev", end)

    def address(self, ns: str, addr: str, prefix: int = 24) -> None:
        """A non-loopback address inside `ns` alone (both ends of a veth pair stay in it): glibc's getaddrinfo
        (AI_ADDRCONFIG, used by Slurm) resolves nothing, not even 127.0.0.1, in a namespace with loopback only."""
        end_a, end_b = self._pair()
        _ip("-n", ns, "link", "add", end_a, "type", "veth", "peer", "name", end_b)
        _ip("-n", ns, "addr", "add", f"{addr}/{prefix}", "dev", end_a)
        _ip("-n", ns, "link", "set", end_a, "up")
        _ip("-n", ns, "link", "set", end_b, "up")

    def spawn(
        self,
        ns: str,
        argv: list[str],
        env: dict[str, str],
        log: Path,
        cwd: Path | None = None,
        binds: Binds | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running service tree in `ns`, in a PID namespace of its own; output to `log`. `binds`: folders
        mounted over paths (e.g. /root, /tmp) for this tree alone, so that it has a home and a /tmp of its own."""
        cmd = ["ip", "netns", "exec", ns, *_pid_namespace(argv, binds)]
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.services.append(proc)
        return proc

    @staticmethod
    def run(
        ns: str, argv: list[str], env: dict[str, str], timeout: float, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a short command in `ns` (e.g. a client: sbatch, ray status); killed after `timeout` seconds."""
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=timeout,
            preexec_fn=_die_with_parent,
        )

    @staticmethod
    def run_apart(
        ns: str,
        argv: list[str],
        env: dict[str, str],
        timeout: float,
        binds: Binds | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in `ns` in a PID namespace of its own (whatever it leaves running, such as SSH connection
        masters, dies when it ends) with `binds` mounted for it alone."""
        return subprocess.run(
            ["ip", "netns", "exec", ns, *_pid_namespace(argv, binds)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=timeout,
            preexec_fn=_die_with_parent,
        )

    @staticmethod
    def run_inside(
        service: subprocess.Popen[bytes],
        argv: list[str],
        env: dict[str, str],
        timeout: float,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in a service's network, mount and PID namespaces: a Ray driver must, since its node's raylet
        watches the driver's process id (a driver outside the PID namespace looks dead to it)."""
        children = Path(f"/proc/{service.pid}/task/{service.pid}/children")
        deadline = time.monotonic() + 30
        while not (first := children.read_text().split() if children.exists() else []):
            if time.monotonic() > deadline or service.poll() is not None:
                raise RuntimeError(f"service {service.args} has no running namespace (exit {service.poll()})")
            time.sleep(0.1)
        return subprocess.run(
            ["nsenter", "--target", first[0], "--pid", "--mount", "--net", "--", *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=timeout,
            preexec_fn=_die_with_parent,
        )

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """Kill one service tree: SIGKILL to `unshare`, whose child (the namespace's first process) then gets SIGKILL,
        and with it every process of the PID namespace."""
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        for proc in reversed(self.services):
            self.stop(proc)
        self.services.clear()
        for ns in reversed(self.namespaces):
            _ip("netns", "del", ns, check=False)
        self.namespaces.clear()


def sandbox_or_skip(reason: str | None) -> Iterator[Sandbox]:
    """A fixture's body: skip with `reason` (the machine lacks what the test needs), else a Sandbox removed after."""
    import pytest

    if reason:
        pytest.skip(reason)
    box = Sandbox()
    try:
        yield box
    finally:
        box.close()
