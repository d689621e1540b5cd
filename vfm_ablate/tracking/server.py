"""A real local `mlflow server` on 127.0.0.1: a free port, a SQLite backend and artifact store under a folder,
health-checked before use; it runs in its own process group, which `stop_mlflow_server` kills, so no uvicorn
worker outlives it. Used by scripts/ui_screenshots.py (the docs' screenshots) and the tests' `mlflow_server`
fixture."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 120.0  # the server imports all of MLflow; on a busy 2-core machine that takes ~10-30 s


@dataclass
class MlflowServer:
    """A running server: `uri` is what clients pass as tracking URI."""

    uri: str
    port: int
    backend_uri: str
    artifacts_dir: Path
    log_path: Path
    process: subprocess.Popen

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mlflow_command() -> list[str]:
    beside = Path(sys.executable).with_name("mlflow")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("mlflow")
    return [found] if found else [sys.executable, "-m", "mlflow"]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_mlflow_server(
    root: Path,
    timeout_s: float = START_TIMEOUT_S,
    attempts: int = 3,
    backend_uri: str | None = None,
    extra_args: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
) -> MlflowServer:
    """Start a server storing everything under `root` (or serving the existing store `backend_uri`, e.g. a finished
    sweep's mlflow.db); retries on another port if the chosen one was taken. `extra_args` / `extra_env`: e.g. the
    basic-auth app (`--app-name basic-auth`, MLFLOW_AUTH_ADMIN_PASSWORD)."""
    root.mkdir(parents=True, exist_ok=True)
    backend_uri = backend_uri or f"sqlite:///{root / 'server.db'}"
    artifacts = root / "artifacts"
    last_error = ""
    for attempt in range(attempts):
        port = _free_port()
        log_path = root / f"server-{attempt}.log"
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", PYTHONUNBUFFERED="1", **(extra_env or {}))
        env.pop("MLFLOW_TRACKING_URI", None)
        cmd = _mlflow_command() + [
            "server",
            "--backend-store-uri", backend_uri,
            "--artifacts-destination", str(artifacts),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--workers", "1",
            *extra_args,
        ]  # fmt: skip
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True
            )
        server = MlflowServer(f"http://127.0.0.1:{port}", port, backend_uri, artifacts, log_path, proc)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _healthy(port):
                return server
            time.sleep(0.25)
        last_error = f"exit code {proc.poll()}; log:\n{server.log_tail()}"
        stop_mlflow_server(server)
    raise RuntimeError(f"mlflow server did not become healthy after {attempts} attempts ({last_error})")


def stop_mlflow_server(server: MlflowServer, grace_s: float = 10.0) -> None:
    """Kill the server's whole process group (uvicorn runs in a child process)."""
    proc = server.process
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = None
    if pgid is not None:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    if pgid is not None:
        try:
            os.killpg(pgid, signal.SIGKILL)  # stragglers of the group (uvicorn worker) even if the leader exited
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.wait(timeout=grace_s)
