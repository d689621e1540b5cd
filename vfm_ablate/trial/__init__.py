"""The trial engine: one trial (data -> model -> fit -> test -> write) as a plain function. No Ray, no MLflow.

`from vfm_ablate.trial import run_trial`; the engine (torch, MONAI) loads on first use, so that light modules of
this package (e.g. `trial.files`) can be imported without it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NonFiniteLossError", "TrialReporter", "TrialResult", "run_trial"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module 'vfm_ablate.trial' has no attribute {name!r}")
