"""The `mlflow_server` fixture: a real `mlflow server` on 127.0.0.1 (vfm_ablate/tracking/server.py) per test module.

tests/conftest.py registers this module as a plugin, so every test can ask for it; its process group is killed at
teardown.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vfm_ablate.tracking.server import MlflowServer, start_mlflow_server, stop_mlflow_server

__all__ = ["MlflowServer", "mlflow_server", "start_mlflow_server", "stop_mlflow_server"]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A fresh server per test module; stopped (process group killed) when the module's tests are done."""
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow_server"))
    try:
        yield server
    finally:
        stop_mlflow_server(server)
