"""Helpers for benchmark scripts: locate ../shared/data and point the built-in dataset entries at it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def require_shared_data() -> Path:
    """Exit cleanly (status 0, a message) when the real data is not next to the repo."""
    if not (SHARED_DATA / "vnc").is_dir() or not (SHARED_DATA / "lucchi_pp_subset").is_dir():
        print(f"skipped: real data not found at {SHARED_DATA}")
        sys.exit(0)
    os.environ["VFM_ABLATE_DATA_ROOT"] = str(SHARED_DATA)
    return SHARED_DATA
