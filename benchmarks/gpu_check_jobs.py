"""gpu_check's log and child processes: every line to stdout and the log file as it comes; each command in its own
process group, stopped at its deadline (SIGINT first, so a command can write what it has, then SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path


class Log:
    """Every line to stdout and to OUT/log.txt at once, with the seconds since the start."""

    def __init__(self, path: Path) -> None:
        self.start = time.monotonic()
        self.file = path.open("a", buffering=1)
        self.lock = threading.Lock()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def __call__(self, message: str) -> None:
        with self.lock:
            for line in message.splitlines() or [""]:
                text = f"[{self.elapsed():6.1f}s] {line}"
                print(text, flush=True)
                self.file.write(text + "\n")


class Job:
    """A child process in its own process group, its output read as it comes (echoed to the log or kept)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, log: Log, echo: bool) -> None:
        self.name, self.log, self.echo = name, log, echo
        self.lines: list[str] = []
        self.started = time.monotonic()
        self.timed_out = False
        log(f"{name}: {' '.join(_short(a) for a in argv)}")
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if self.echo:
                self.log(f"  {self.name} | {line}")

    def wait(self, deadline: float) -> int:
        """The exit status; at the deadline (time.monotonic()), SIGINT to the group, then SIGKILL 20 s later."""
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.timed_out = True
            self.log(f"{self.name}: out of time after {time.monotonic() - self.started:.0f} s, interrupting")
            self._signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait()
        self.reader.join(timeout=5)
        self.log(f"{self.name}: exit status {self.proc.returncode} after {time.monotonic() - self.started:.0f} s")
        return self.proc.returncode

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _short(arg: str) -> str:
    """An argument as the log shows it: on one line, at most 100 characters."""
    arg = " ".join(arg.split()) if "\n" in arg else arg
    return arg if len(arg) <= 100 else arg[:97] + "..."
