"""The live progress view of a sweep (a Ray Tune callback on the driver).

Tune calls `on_trial_result` on the driver for every `tune.report` of a trial, i.e. once per epoch, so the view
knows each running trial's epoch, losses and early-stopping state as they happen:

- on a terminal (TTY): a live table (rich) of the running trials -- epoch k / max, train and validation loss,
  best epoch, epochs left before early stopping, elapsed, estimated time to the end -- under a header with
  running / done / failed counts and the best IoU so far; each finished or failed trial leaves one line above it;
- otherwise (CI logs, Slurm output files): plain lines -- one per start / end / failure, and per running trial at
  most one epoch line every `interval_s` seconds (`run.progress_interval_s`, `--progress-interval`).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .labels import HEADLINE, headline_iou
from .store import TrialStore
from .trainable import decode_config

DEFAULT_INTERVAL_S = 30.0


@dataclass
class _Running:
    """What the view knows of one running trial (from its reports)."""

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
    last_line: float = 0.0  # when its last plain epoch line was printed

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

    @property
    def epochs_left(self) -> int:
        """Epochs still to run at most: to max_epochs, or until patience runs out without improvement."""
        return max(0, min(self.max_epochs - (self.epoch + 1), self.patience - self.bad_epochs))

    def eta_s(self) -> float | None:
        return self.epochs_left * self.epoch_seconds if self.seen else None

    def cells(self, now: float) -> dict[str, str]:
        eta = self.eta_s()
        return {
            "epoch": f"{self.epoch + 1}/{self.max_epochs}" if self.seen else f"0/{self.max_epochs}",
            "train": _num(self.train_loss),
            "val": _num(self.val_loss),
            "best ep": str(self.best_epoch + 1) if self.best_epoch is not None else ("?" if self.seen else "-"),
            "patience left": str(self.patience - self.bad_epochs) if self.seen else "-",
            "elapsed": _duration(now - self.started),
            "ETA": f"≤{_duration(eta)}" if eta is not None else "-",
        }


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
    """Ray Tune callback: live per-epoch progress of the running trials, one line per finished or failed trial.

    Ray pickles callbacks into the experiment state for `--resume`: only plain values are kept across that
    (the live display and the stream are made again in the process that prints).
    """

    def __init__(self, store_root: str, total: int, interval_s: float = DEFAULT_INTERVAL_S, live: bool | None = None):
        self.store_root = store_root
        self.total = total
        self.interval_s = interval_s
        self.live = live  # None: a live table when stdout is a terminal
        self._display: Any = None
        self._reset()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_display"] = None
        return state

    def _reset(self) -> None:
        self.t0 = _LAUNCH_T0.setdefault(self.store_root, time.monotonic())  # one clock per launch, all experiments
        self.running: dict[str, _Running] = {}
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.stopped: set[str] = set()
        self.best: tuple[float, str] | None = None

    def as_callback(self) -> Any:
        from ray import tune

        view = self

        class _Callback(tune.Callback):
            def setup(self, **info: Any) -> None:
                view.setup()

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
        now = time.monotonic()
        if self._live_display() is not None:
            self._refresh()
        elif now - state.last_line >= self.interval_s:
            state.last_line = now
            shown = "  ".join(f"{k} {v}" for k, v in state.cells(now).items())
            self._event(f"epoch  {tid}  {shown}")

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
            self._event(f"stopped {tid} early (scheduler) at epoch {int(last.get('epoch', -1)) + 1}")

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

    # ---- output

    def _update_best(self, tid: str, metrics: dict[str, Any]) -> None:
        iou = headline_iou(metrics)
        if iou is not None and (self.best is None or iou > self.best[0]):
            self.best = (iou, tid)

    def header(self) -> str:
        best = f"best {HEADLINE} {self.best[0]:.4f} ({self.best[1]})" if self.best else f"best {HEADLINE} -"
        return (
            f"running {len(self.running)} | done {len(self.done)}/{self.total} | failed {len(self.failed)}"
            + (f" | stopped {len(self.stopped)}" if self.stopped else "")
            + f" | {best}"
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
        for name in ("trial", "", "epoch", "train", "val", "best ep", "patience left", "elapsed", "ETA"):
            table.add_column(name, no_wrap=name != "")
        for tid, state in sorted(self.running.items(), key=lambda kv: kv[1].started):
            table.add_row(tid, state.label, *state.cells(now).values())
        return table


_LAUNCH_T0: dict[str, float] = {}


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
