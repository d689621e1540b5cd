"""Building blocks of the small sweeps the Ray tests run: a tiny random-init ViT on 32 px synthetic images, on CPU."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

TINY_DATA = {"layout": "synthetic", "domain": "a", "n_train": 4, "n_test": 2, "size": [32, 32]}


def tiny_base(optim: dict[str, Any], **settings: Any) -> dict[str, Any]:
    """A sweep's `base`: seconds per trial, trained on the inline dataset `sa` (declare it with TINY_DATA)."""
    return {
        "backbone": "tiny_vit_p14",
        "weights": "random",
        "device": "cpu",
        "num_overlays": 0,
        "data": {"train": ["sa"], "resize": {"policy": "native"}},
        "optim": optim,
        **settings,
    }


_HEADER_TRIALS = re.compile(r"^#\s*Trials:\s*(\d+)", re.MULTILINE)


def documented_trial_count(path: str | Path) -> int | None:
    """The `# Trials: N` count a sweep file's header comment promises (checked against the expansion)."""
    match = _HEADER_TRIALS.search(Path(path).read_text())
    return int(match.group(1)) if match else None
