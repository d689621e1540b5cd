"""Pick the torch device a trial or a diagnostic runs on (light module: no MONAI/Ray imports)."""

from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_device(requested: str) -> torch.device:
    """`auto` -> CUDA when visible, else CPU; an explicit `cuda` without a GPU is a clear error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was requested but no CUDA device is visible to this process")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
