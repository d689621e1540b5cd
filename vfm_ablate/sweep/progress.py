"""The live progress view of a sweep: one line per trial event with running / done / failed and the best IoU."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from .plan import short_label
from .store import TrialStore
from .trainable import HEADLINE, headline_iou, sampled_values, trial_spec_from_config


class ProgressView:
    """Ray Tune callback printing one line per trial event: running / done / failed and the best IoU so far.

    Holds only plain values (Ray pickles it into the experiment for `--resume`); it prints to stdout.
    """

    def __init__(self, store_root: str, total: int):
        self.store_root = store_root
        self.total = total
        self._reset()

    def _reset(self) -> None:
        self.t0 = _LAUNCH_T0.setdefault(self.store_root, time.monotonic())  # one clock per launch, all experiments
        self.running: set[str] = set()
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

            def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                view.trial_completed(trial)

            def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                view.trial_errored(trial)

            def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                view.trial_retried(trial)

        return _Callback()

    def setup(self) -> None:
        self._reset()
        for tid, record in TrialStore(self.store_root).results().items():  # finished in earlier launches
            self.done.add(tid)
            self._update_best(tid, record.get("metrics", {}))
        if self.done:
            self._say(f"{len(self.done)} of {self.total} trials finished so far")

    def trial_started(self, trial: Any) -> None:
        tid = _trial_id_of(trial)
        self.running.add(tid)
        earlier = "  (finished in an earlier launch: reporting its stored result)" if tid in self.done else ""
        self._say(f"start  {tid}  {_describe(trial)}{earlier}")

    def trial_completed(self, trial: Any) -> None:
        tid = _trial_id_of(trial)
        self.running.discard(tid)
        last = trial.last_result or {}
        if last.get("trial_done"):
            self.done.add(tid)
            self._update_best(tid, last)
            iou = headline_iou(last)
            shown = f"{HEADLINE} {iou:.4f}" if iou is not None else ""
            self._say(f"done   {tid}  {shown}  epochs {int(last.get('epochs_run', 0))}")
        else:
            self.stopped.add(tid)
            self._say(f"stopped {tid} early (scheduler) at epoch {int(last.get('epoch', -1)) + 1}")

    def trial_errored(self, trial: Any) -> None:
        tid = _trial_id_of(trial)
        self.running.discard(tid)
        self.failed.add(tid)
        error = TrialStore(self.store_root).last_error(tid) or first_error_line(trial)
        self._say(f"FAILED {tid}: {error[:300]}")

    def trial_retried(self, trial: Any) -> None:
        tid = _trial_id_of(trial)
        self.running.discard(tid)
        error = TrialStore(self.store_root).last_error(tid) or "its worker died"
        self._say(f"retry  {tid} from its last checkpoint (max_failures): {error[:200]}")

    def _update_best(self, tid: str, metrics: dict[str, Any]) -> None:
        iou = headline_iou(metrics)
        if iou is not None and (self.best is None or iou > self.best[0]):
            self.best = (iou, tid)

    def _say(self, event: str) -> None:
        best = f"best {HEADLINE} {self.best[0]:.4f} ({self.best[1]})" if self.best else f"best {HEADLINE} -"
        status = (
            f"running {len(self.running)} | done {len(self.done)}/{self.total} | failed {len(self.failed)}"
            + (f" | stopped {len(self.stopped)}" if self.stopped else "")
            + f" | {best}"
        )
        print(f"[{time.monotonic() - self.t0:7.1f}s] {status} || {event}", file=sys.stdout, flush=True)


_LAUNCH_T0: dict[str, float] = {}


def _describe(trial: Any) -> str:
    try:
        values = sampled_values(trial.config)
        sampled = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        return f"{short_label(trial_spec_from_config(trial.config))} {sampled}".rstrip()
    except Exception:
        return ""


def _trial_id_of(trial: Any) -> str:
    try:
        return trial_spec_from_config(trial.config).trial_id()
    except Exception:  # a config we cannot read still gets a line
        return str(trial.trial_id)


def first_error_line(trial: Any) -> str:
    path = getattr(trial, "error_file", None) or ""
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        return lines[-1][:200] if lines else "(no error text)"
    except OSError:
        return "(error text not readable here)"
