"""The live progress view of a sweep (a Ray Tune callback on the driver).
One module on purpose: one callback's state (trials, phases, time-left bounds) and its two renderings of it, which
must stay in step.

Tune calls `on_trial_result` on the driver for every `tune.report` of a trial, i.e. once per epoch, so the view
knows each running trial's epoch, losses and early-stopping state as they happen; what a trial does between two
reports (loading data, extracting features `n / N images`, training epoch k step n / N, validating, testing,
diagnostics, writing outputs) comes from the launch's phase board (sweep/phase_board), taken every second:

- on a terminal (TTY): a live table (rich) of the running trials -- phase with its progress, epoch k / max, train
  and validation loss, best epoch, epochs left before early stopping, elapsed, and the time left -- under a
  header with running / done / failed counts, the best IoU so far and the time the sweep has left; each finished
  or failed trial leaves one line above it;
- otherwise (CI logs, Slurm output files): plain lines -- one per start / end / failure / new phase, and per
  running trial at most one progress line (an epoch, or progress inside a phase) every `interval_s` seconds
  (`run.progress_interval_s`, `--progress-interval`).

Time left is stated as two bounds, because early stopping makes the end unknowable: the earliest end (validation
never improves again: the patience left runs out) and the latest (every epoch up to max_epochs), both from the
epochs seen so far; the sweep's bounds add the trials not yet started (their earliest: patience + 1 epochs) over
the trials running at once. Feature extraction and testing are not in them.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..trial.phases import EVERY_EPOCH, Phase
from .labels import HEADLINE, headline_iou
from .store import TrialStore
from .trainable import decode_config

DEFAULT_INTERVAL_S = 30.0
POLL_EVERY_S = 1.0  # how often the view takes the phase board
_NOT_ON_EPOCH_LINES = ("phase", "left if no gain", "left at most")  # (the time left is said in words there)


@dataclass
class _Running:
    """What the view knows of one running trial (from its reports and its phases)."""

    label: str
    started: float
    max_epochs: int
    patience: int
    epoch: int = -1  # last reported epoch (0-based)
    train_loss: float = math.nan
    val_loss: float = math.nan
    best_val: float = math.inf
    best_epoch: int | None = None
    bad_epochs: int = 0
    epoch_seconds: float = 0.0  # mean over the epochs seen
    seen: int = 0
    last_line: float = 0.0  # when its last plain progress line (epoch or phase) was printed
    phase: Phase | None = None
    phase_since: float = 0.0
    reported: float = 0.0  # when its last epoch was reported (the next one has been running since)

    def update(self, result: dict[str, Any]) -> None:
        epoch = int(result.get("epoch", self.epoch + 1))
        val = float(result.get("val_loss", math.nan))
        best = float(result.get("best_val_loss", val))
        if math.isfinite(val) and val <= best:  # this epoch set the best validation loss
            self.best_epoch, self.bad_epochs = epoch, 0
        elif self.seen:
            self.bad_epochs += 1
        seconds = float(result.get("epoch_time_s", 0.0))
        self.epoch_seconds = (self.epoch_seconds * self.seen + seconds) / (self.seen + 1)
        self.seen += 1
        self.epoch, self.val_loss, self.best_val = epoch, val, best
        self.train_loss = float(result.get("train_loss", math.nan))

    def set_phase(self, phase: Phase, now: float) -> bool:
        """Take a phase from the board; True when it starts a new phase worth a line of its own."""
        previous, self.phase = self.phase, phase
        if previous is not None and previous.step == phase.step:
            return False
        self.phase_since = now
        if phase.kind in EVERY_EPOCH:  # training starts once; later epochs have their epoch lines
            return previous is None or previous.kind not in EVERY_EPOCH
        return True

    @property
    def epochs_done(self) -> int:
        return self.epoch + 1

    @property
    def epochs_to_early_stop(self) -> int:
        """Epochs still to run if validation never improves again: the patience left (at most to max_epochs)."""
        return max(0, min(self.max_epochs - self.epochs_done, self.patience - self.bad_epochs))

    @property
    def epochs_to_max(self) -> int:
        return max(0, self.max_epochs - self.epochs_done)

    def left_s(self, epoch_s: float | None = None, now: float | None = None) -> tuple[float, float] | None:
        """(earliest, latest) seconds left: early stop, max epochs, less the part of the running epoch already
        spent (at `now`); None before any epoch time is known."""
        per_epoch = self.epoch_seconds if self.seen else epoch_s
        if per_epoch is None:
            return None
        spent = min(max(0.0, now - self.reported), per_epoch) if now is not None and self.seen else 0.0
        early, late = self.epochs_to_early_stop * per_epoch, self.epochs_to_max * per_epoch
        return max(0.0, early - spent) if early else 0.0, max(0.0, late - spent) if late else 0.0

    def cells(self, now: float) -> dict[str, str]:
        left = self.left_s(now=now)
        return {
            "phase": self.phase_text(now),
            "epoch": f"{self.epochs_done}/{self.max_epochs}" if self.seen else f"0/{self.max_epochs}",
            "train": _num(self.train_loss),
            "val": _num(self.val_loss),
            "best ep": str(self.best_epoch + 1) if self.best_epoch is not None else ("?" if self.seen else "-"),
            "patience left": str(self.patience - self.bad_epochs) if self.seen else "-",
            "elapsed": _duration(now - self.started),
            "left if no gain": _duration(left[0]) if left else "-",  # the earliest end: early stopping
            "left at most": _duration(left[1]) if left else "-",  # the latest: max_epochs
        }

    def phase_text(self, now: float) -> str:
        if self.phase is None:
            return "starting"
        return f"{self.phase.text()} ({_duration(now - self.phase_since)})"


def _num(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "-"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressView:
    """Ray Tune callback: live progress of the running trials (phases, epochs, time left), one line per finished or
    failed trial.

    `bounds`: (max_epochs, patience) of every trial the launch may run, for the time the trials not yet started
    will take. Ray pickles callbacks into the experiment state for `--resume`: only plain values are kept across
    that (the live display, the stream and the phase board are made again in the process that prints).
    """

    def __init__(
        self,
        store_root: str,
        total: int,
        interval_s: float = DEFAULT_INTERVAL_S,
        live: bool | None = None,
        bounds: list[tuple[int, int]] | None = None,
        scheduler: str = "the scheduler",
    ):
        self.store_root = store_root
        self.total = total
        self.interval_s = interval_s
        self.live = live  # None: a live table when stdout is a terminal
        self.bounds = list(bounds or [])
        self.scheduler = scheduler  # who stops trials early (ASHA in a search)
        self._display: Any = None
        self._board: Any = None
        self._reset()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_display"] = None
        state["_board"] = None
        return state

    def _reset(self) -> None:
        self.t0 = _LAUNCH_T0.setdefault(self.store_root, time.monotonic())  # one clock per launch, all experiments
        self.running: dict[str, _Running] = {}
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.stopped: set[str] = set()
        self.best: tuple[float, str] | None = None
        self.epoch_times: list[float] = []  # every epoch seen in this launch: the guess for trials without one
        self._polled = 0.0

    def attach_board(self, board: Any) -> ProgressView:
        """Show the phases the trials post to `board` (sweep/phase_board). The board is this launch's: a view Ray
        restores from an earlier launch's experiment state (`--resume`) finds it by the storage root."""
        self._board = _LAUNCH_BOARD[self.store_root] = board
        return self

    def as_callback(self) -> Any:
        from ray import tune

        view = self

        class _Callback(tune.Callback):
            def setup(self, **info: Any) -> None:
                view.setup()

            def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
                view.poll()

            def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                view.trial_started(trial)

            def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
                view.trial_result(trial, result)

            def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                view.trial_completed(trial)

            def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                view.trial_errored(trial)

            def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                view.trial_retried(trial)

            def on_experiment_end(self, trials: list, **info: Any) -> None:
                view.close()

        return _Callback()

    # ---- events

    def setup(self) -> None:
        self._reset()
        for tid, record in TrialStore(self.store_root).results().items():  # finished in earlier launches
            self.done.add(tid)
            self._update_best(tid, record.get("metrics", {}))
        if self.done:
            self._event(f"{len(self.done)} of {self.total} trials finished so far")

    def trial_started(self, trial: Any) -> None:
        tid = _trial_id_of(trial)
        self.running[tid] = _new_running(trial)
        earlier = "  (finished in an earlier launch: reporting its stored result)" if tid in self.done else ""
        self._event(f"start  {tid}  {self.running[tid].label}{earlier}")

    def trial_result(self, trial: Any, result: dict[str, Any]) -> None:
        """Every tune.report: an epoch (train/val loss) or the final test report."""
        tid = _trial_id_of(trial)
        if result.get("trial_done") or "train_loss" not in result:
            return
        state = self.running.setdefault(tid, _new_running(trial))
        state.update(result)
        state.reported = time.monotonic()
        if "epoch_time_s" in result:
            self.epoch_times.append(float(result["epoch_time_s"]))
        now = time.monotonic()
        if self._live_display() is not None:
            self._refresh()
        elif now - state.last_line >= self.interval_s:
            state.last_line = now
            cells = state.cells(now)
            shown = "  ".join(
                f"{k} {v}" for k, v in cells.items() if k not in ("phase", "left if no gain", "left at most")
            )
            self._event(f"epoch  {tid}  {shown}  {self._left_text(state)}")

    def phases(self, latest: dict[str, Phase]) -> None:
        """Phases taken from the board (trial id -> its latest): a new phase is a line, and so is its end (n/n);
        progress inside one a line at most every interval_s (plain output); the live table shows them all."""
        now = time.monotonic()
        live = self._live_display() is not None
        for tid, phase in latest.items():
            state = self.running.get(tid)
            if state is None:  # ended since it posted
                continue
            new = state.set_phase(phase, now)
            if live:
                continue
            if new or (phase.total > 0 and (phase.finished or now - state.last_line >= self.interval_s)):
                state.last_line = now
                self._event(f"phase  {tid}  {state.phase_text(now)}")
        if live:
            self._refresh()

    def poll(self) -> None:
        """Take the board's news (at most every POLL_EVERY_S: Tune calls this many times a second)."""
        now = time.monotonic()
        if self._board is None:
            self._board = _LAUNCH_BOARD.get(self.store_root)
        if self._board is None or not self.running or now - self._polled < POLL_EVERY_S:
            return
        self._polled = now
        from .phase_board import take_phases

        self.phases(take_phases(self._board))

    def trial_completed(self, trial: Any) -> None:
        tid = _trial_id_of(trial)
        state = self.running.pop(tid, None)
        last = trial.last_result or {}
        took = f"  in {_duration(time.monotonic() - state.started)}" if state else ""
        if last.get("trial_done"):
            self.done.add(tid)
            self._update_best(tid, last)
            iou = headline_iou(last)
            shown = f"{HEADLINE} {iou:.4f}" if iou is not None else ""
            self._event(f"done   {tid}  {shown}  epochs {int(last.get('epochs_run', 0))}{took}")
        else:
            self.stopped.add(tid)
            self._event(f"stopped {tid} by {self.scheduler} at epoch {int(last.get('epoch', -1)) + 1}")

    def trial_errored(self, trial: Any) -> None:
        tid = _trial_id_of(trial)
        self.running.pop(tid, None)
        self.failed.add(tid)
        error = TrialStore(self.store_root).last_error(tid) or first_error_line(trial)
        self._event(f"FAILED {tid}: {error[:300]}")

    def trial_retried(self, trial: Any) -> None:
        tid = _trial_id_of(trial)
        self.running.pop(tid, None)
        error = TrialStore(self.store_root).last_error(tid) or "its worker died"
        self._event(f"retry  {tid} from its last checkpoint (max_failures): {error[:200]}")

    def close(self) -> None:
        if self._display is not None:
            self._display.stop()
            self._display = None

    # ---- time left

    def _epoch_guess(self) -> float | None:
        return sum(self.epoch_times) / len(self.epoch_times) if self.epoch_times else None

    def _left_text(self, state: _Running) -> str:
        left = state.left_s(now=time.monotonic())
        if left is None:
            return ""
        if _duration(left[0]) == _duration(left[1]):  # the patience outlasts the epochs still allowed
            return f"left {_duration(left[1])} (max epochs)"
        return f"left {_duration(left[0])} if no gain (early stop), at most {_duration(left[1])} (max epochs)"

    def sweep_left_s(self) -> tuple[float, float] | None:
        """(earliest, latest) seconds the sweep has left, over the trials running at once: the running trials'
        bounds plus, for every trial not started yet, patience + 1 epochs (earliest) and max_epochs (latest) at the
        mean epoch time seen so far. None before any epoch time is known."""
        guess = self._epoch_guess()
        if guess is None:
            return None
        now = time.monotonic()
        early = late = 0.0
        longest = (0.0, 0.0)
        for state in self.running.values():
            left = state.left_s(guess, now)
            assert left is not None
            early, late = early + left[0], late + left[1]
            longest = (max(longest[0], left[0]), max(longest[1], left[1]))
        pending = max(0, self.total - len(self.done) - len(self.failed) - len(self.stopped) - len(self.running))
        if pending and self.bounds:
            mean_early = sum(min(m, p + 1) for m, p in self.bounds) / len(self.bounds)
            mean_late = sum(m for m, _ in self.bounds) / len(self.bounds)
            early += pending * mean_early * guess
            late += pending * mean_late * guess
        slots = max(1, len(self.running))
        return max(longest[0], early / slots), max(longest[1], late / slots)

    # ---- output

    def _update_best(self, tid: str, metrics: dict[str, Any]) -> None:
        iou = headline_iou(metrics)
        if iou is not None and (self.best is None or iou > self.best[0]):
            self.best = (iou, tid)

    def header(self) -> str:
        best = f"best {HEADLINE} {self.best[0]:.4f} ({self.best[1]})" if self.best else f"best {HEADLINE} -"
        left = self.sweep_left_s()
        sweep_left = (
            ""
            if left is None or _duration(left[1]) == "0s"  # (testing and writing are not in the bounds)
            else f" | sweep left ≈{_duration(left[1])} at max epochs"
            if _duration(left[0]) == _duration(left[1])
            else f" | sweep left ≈{_duration(left[0])} if trials stop early, ≈{_duration(left[1])} at max epochs"
        )
        return (
            f"running {len(self.running)} | done {len(self.done)}/{self.total} | failed {len(self.failed)}"
            + (f" | stopped {len(self.stopped)}" if self.stopped else "")
            + f" | {best}{sweep_left}"
        )

    def _event(self, event: str) -> None:
        line = f"[{time.monotonic() - self.t0:7.1f}s] {self.header()} || {event}"
        display = self._live_display()
        if display is not None:
            display.console.print(line, highlight=False, markup=False)
            self._refresh()
        else:
            print(line, file=sys.stdout, flush=True)

    def _live_display(self) -> Any:
        if self.live is None:
            self.live = sys.stdout.isatty()
        if not self.live:
            return None
        if self._display is None:
            from rich.live import Live

            self._display = Live(self._table(), refresh_per_second=2, transient=True, redirect_stdout=False)
            self._display.start()
        return self._display

    def _refresh(self) -> None:
        if self._display is not None:
            self._display.update(self._table())

    def _table(self) -> Any:
        from rich.table import Table

        now = time.monotonic()
        table = Table(title=self.header(), title_justify="left", box=None, pad_edge=False)
        columns = ("trial", "", "phase", "epoch", "train", "val", "best ep", "patience left", "elapsed")
        for name in (*columns, "left if no gain", "left at most"):
            table.add_column(name, no_wrap=name not in ("", "phase"))
        for tid, state in sorted(self.running.items(), key=lambda kv: kv[1].started):
            table.add_row(tid, state.label, *state.cells(now).values())
        if self.running:
            table.caption = (
                "left if no gain: the earliest end, if validation never improves again (early stopping); "
                "left at most: every epoch up to max_epochs"
            )
            table.caption_justify = "left"
        return table


_LAUNCH_T0: dict[str, float] = {}
_LAUNCH_BOARD: dict[str, Any] = {}  # storage root -> this launch's phase board


def _new_running(trial: Any) -> _Running:
    t = decode_config(trial.config)
    return _Running(t.label, time.monotonic(), t.max_epochs, t.patience)


def _trial_id_of(trial: Any) -> str:
    return decode_config(trial.config).trial_id


def first_error_line(trial: Any) -> str:
    path = getattr(trial, "error_file", None) or ""
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        return lines[-1][:200] if lines else "(no error text)"
    except OSError:
        return "(error text not readable here)"
