"""The running trials' phases, from the workers to the driver's live view.

Ray Tune hears of a trial only through `tune.report`, and every report is a training iteration: ASHA counts them
(its `time_attr`), the searcher reads their metrics, and Tune demands the search metric in each. So phases never
go through `tune.report` (it still carries exactly one result per epoch, and the final one). They go through a
small Ray actor instead, the board: each trial posts its latest phase to it (fire and forget: a trial never waits
on the view), and the driver's view takes what changed every second. An actor reaches every node of a cluster,
which files under a remote storage path (s3://) would do only slowly.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..trial.phases import Phase

_log = logging.getLogger(__name__)
FORWARD_EVERY_S = 1.0  # a trial passes progress inside one phase on at most this often (a new phase at once)
TAKE_TIMEOUT_S = 5.0


class Board:
    """The actor's state: the latest phase of each trial, since the view last took them."""

    def __init__(self) -> None:
        self._latest: dict[str, Phase] = {}

    def post(self, trial_id: str, phase: Phase) -> None:
        self._latest[trial_id] = phase

    def take(self) -> dict[str, Phase]:
        latest, self._latest = self._latest, {}
        return latest


def start_board() -> Any:
    """A board for this launch (needs an initialised Ray; no CPU of the trials' own: num_cpus=0)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=0)(Board).remote()


def take_phases(board: Any) -> dict[str, Phase]:
    """What changed since the last take; nothing when the board cannot answer (the view is never the sweep's
    problem: a dead board only costs the phase column)."""
    import ray

    try:
        return ray.get(board.take.remote(), timeout=TAKE_TIMEOUT_S)
    except Exception as err:  # GetTimeoutError, RayActorError: the view goes on with epochs only
        _log.debug("phase board did not answer: %s", err)
        return {}


class PhasePoster:
    """The worker's side (inside the trial's reporter): a new phase is posted at once, progress inside one at most
    every FORWARD_EVERY_S."""

    def __init__(self, board: Any, trial_id: str) -> None:
        self.board = board
        self.trial_id = trial_id
        self._last: tuple[tuple[str, int | None], float] | None = None

    def __call__(self, phase: Phase) -> None:
        now = time.monotonic()
        if self._last is not None and self._last[0] == phase.step and now - self._last[1] < FORWARD_EVERY_S:
            if not phase.finished:
                return
        self._last = (phase.step, now)
        self.board.post.remote(self.trial_id, phase)
