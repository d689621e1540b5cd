"""Suite-wide settings: one torch thread per process so parallel Ray workers don't oversubscribe 2 cores, and the
same global random state at the start of every test, whatever ran before it in the process."""

from __future__ import annotations

import os
import random
import secrets
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

pytest_plugins = [
    "tests.mlflow_server",  # the `mlflow_server` fixture: a real server on 127.0.0.1
    "tests.local_server",  # `local_server`: archives and a Hugging Face hub endpoint on 127.0.0.1 (fetch tests)
    "tests.scheduling",  # longest files first; README's `pytest -n 4` hands them out so the run ends with its longest
]


def pytest_configure(config: pytest.Config) -> None:
    one_thread_per_process()
    if not hasattr(config, "workerinput"):  # the controller, before xdist starts its workers: they inherit both
        one_ray_token(config)


def one_thread_per_process() -> None:
    """One OpenMP thread in every process the tests start (CLIs, Ray, servers), unless the caller chose: README's
    `-n 4` runs four workers and their subprocesses on 2 cores, and torch processes that each start a thread per
    core spin against each other (two tiny trials side by side: 63 s with torch's default, 11 s with one thread
    each)."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")


def one_ray_token(config: pytest.Config) -> None:
    """One Ray authentication token for the whole run, outside the user's home. Ray 2.60 turns token authentication
    on for every local cluster and, on a fresh account, writes ~/.ray/auth_token at its first start, not atomically:
    workers starting their first Ray at once read each other's empty file ("Token authentication is enabled but no
    authentication token was found")."""
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return  # a token the caller points at is theirs to keep
    folder = Path(tempfile.mkdtemp(prefix="vfm-ray-token-"))
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
    token.chmod(0o600)
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)

    def remove() -> None:
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        shutil.rmtree(folder, ignore_errors=True)

    config.add_cleanup(remove)


# Not 0, and no seed a test gives a trial: code that forgets to seed itself (a trial that skips seeding torch before
# building its random-init backbone) then draws from this state, not by chance from the state its own seed sets, so
# a test that rebuilds the model from the trial's seed catches it every time.
GLOBAL_SEED = 20261130


@pytest.fixture(autouse=True)
def _same_global_random_state() -> None:
    """Every test starts from one global random state: a test passes or fails the same alone or in the suite."""
    random.seed(GLOBAL_SEED)
    np.random.seed(GLOBAL_SEED)
    torch.manual_seed(GLOBAL_SEED)


@pytest.fixture(autouse=True)
def _no_outside_ray_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test joins a Ray cluster that happens to run on the machine: RAY_ADDRESS is cleared, and every
    ray.init in tests and product code names its address ("local" for a Ray of its own)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
