"""Suite-wide settings: one torch thread per process so parallel Ray workers don't oversubscribe 2 cores."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)

pytest_plugins = [
    "tests.mlflow_server",  # the `mlflow_server` fixture: a real server on 127.0.0.1
    "tests.local_server",  # `local_server`: archives and a Hugging Face hub endpoint on 127.0.0.1 (fetch tests)
]


@pytest.fixture(autouse=True)
def _no_outside_ray_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test joins a Ray cluster that happens to run on the machine: RAY_ADDRESS is cleared, and every
    ray.init in tests and product code names its address ("local" for a Ray of its own)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
