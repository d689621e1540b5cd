"""Suite-wide settings: one torch thread per process so parallel Ray workers don't oversubscribe 2 cores."""

from __future__ import annotations

import torch

torch.set_num_threads(1)

pytest_plugins = [
    "tests.mlflow_server",  # the `mlflow_server` fixture: a real server on 127.0.0.1
    "tests.local_server",  # `local_server`: archives and a Hugging Face hub endpoint on 127.0.0.1 (fetch tests)
]
