"""A sweep's inputs before launch: the readiness of every trial's datasets and weights (fetch/readiness), the
`fetch` command that gets what is missing, and the check `run` makes before Ray starts."""

from __future__ import annotations

import shlex
from typing import TextIO

from ..fetch.readiness import Readiness, check_readiness
from .plan import PlannedTrial, resolved_entries
from .spec import SweepSpec


def fetch_command(sweep: SweepSpec) -> str:
    """The command that fetches everything this sweep reads (run where the network is reachable)."""
    return f"vfm-ablate fetch {shlex.quote(sweep.source)}"


def sweep_readiness(sweep: SweepSpec, trials: list[PlannedTrial]) -> Readiness:
    """Every dataset and pretrained weight the trials read, with the entries exactly as the trials get them."""
    backbones, datasets = resolved_entries(sweep, trials)
    return check_readiness([t.spec for t in trials], backbones, datasets, fetch_command(sweep))


def check_ready(sweep: SweepSpec, trials: list[PlannedTrial], out: TextIO) -> None:
    """Before Ray starts: offline with anything missing is one ConfigError; online, what is missing is printed."""
    readiness = sweep_readiness(sweep, trials)
    readiness.raise_if_not_ready()
    if readiness.missing:
        print(readiness.format(), file=out, flush=True)
