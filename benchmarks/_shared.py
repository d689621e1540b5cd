"""Helpers for benchmark scripts: locate ../shared/data and point the built-in dataset entries at it; count the
images backbone modules actually run on."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def require_shared_data() -> Path:
    """The real data: next to the repo, else where $VFM_ABLATE_DATA_ROOT points (a checkout elsewhere, e.g. a git
    worktree); exit cleanly (status 0, a message) when neither holds it."""
    given = os.environ.get("VFM_ABLATE_DATA_ROOT")
    for root in (SHARED_DATA, *([Path(given)] if given else [])):
        if (root / "vnc").is_dir() and (root / "lucchi_pp_subset").is_dir():
            os.environ["VFM_ABLATE_DATA_ROOT"] = str(root)
            return root
    print(f"skipped: real data not found at {SHARED_DATA}" + (f" nor at {given}" if given else ""))
    sys.exit(0)


@contextmanager
def backbone_images() -> Iterator[list[int]]:
    """Images passed through any backbone module while the block runs (a forward hook on the backbone modules
    themselves: what really ran, not what the feature cache believes it computed)."""
    import torch

    from vfm_ablate.models.backbones import Backbone

    counts: list[int] = []

    def hook(module: torch.nn.Module, args: tuple, output: object) -> None:
        if isinstance(module, Backbone):
            counts.append(int(args[0].shape[0]))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield counts
    finally:
        handle.remove()
