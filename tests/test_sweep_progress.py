"""The live view of a sweep, driven as Ray Tune drives it (events of trials whose config is the planner's): phases
and progress inside them in log lines and the terminal table, and the time left as two labelled bounds for each
trial and the sweep; how trials that did not finish ended, as the result table and MLflow say it. No Ray: the
events are what Tune's callback passes on."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tests.sweep_helpers import TINY_DATA, tiny_base
from vfm_ablate.sweep import progress
from vfm_ablate.sweep.plan import plan
from vfm_ablate.sweep.progress import ProgressView
from vfm_ablate.sweep.spec import parse_sweep
from vfm_ablate.sweep.trainable import GRID_KEY, encode_config
from vfm_ablate.trial.phases import Phase


@dataclass
class FakeTrial:
    """What the view reads of a Tune trial: its config and last result."""

    config: dict[str, Any]
    last_result: dict[str, Any] = field(default_factory=dict)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(progress.time, "monotonic", c)
    return c


def _trials(tmp_path: Path, n: int) -> list[FakeTrial]:
    sweep = parse_sweep(
        {
            "name": "view",
            "base": tiny_base({"max_epochs": 10, "patience": 5}),
            "axes": {"seed": list(range(n))},
            "datasets": {"sa": TINY_DATA},
        },
        tmp_path / "view.yaml",
    )
    return [FakeTrial({GRID_KEY: encode_config(t)}) for t in plan(sweep).trials]


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line.split(" || ", 1)[1] for line in capsys.readouterr().out.splitlines()]


def test_log_lines_show_each_new_phase_and_progress_at_most_every_interval(
    tmp_path: Path, clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    [trial] = _trials(tmp_path, 1)
    tid = trial.config[GRID_KEY]["trial_id"]
    view = ProgressView(str(tmp_path / "store"), 1, interval_s=30, live=False)
    view.trial_started(trial)
    view.phases({tid: Phase("loading data")})
    clock.now += 4
    view.phases({tid: Phase("extracting features", 0, 480)})
    clock.now += 10
    view.phases({tid: Phase("extracting features", 100, 480)})  # 10 s into it: too soon for a line
    clock.now += 25
    view.phases({tid: Phase("extracting features", 350, 480)})  # 35 s since the last line
    clock.now += 10
    view.phases({tid: Phase("extracting features", 480, 480)})  # its end: how long it took
    view.phases({tid: Phase("training", 0, 12, epoch=1)})
    clock.now += 5
    view.phases({tid: Phase("validating", epoch=1)})
    view.phases({tid: Phase("training", 0, 12, epoch=2)})  # later epochs: their epoch lines say it
    assert _lines(capsys) == [
        f"start  {tid}  tiny_vit_p14 frozen sa",
        f"phase  {tid}  loading data (0s)",
        f"phase  {tid}  extracting features 0/480 images (0s)",
        f"phase  {tid}  extracting features 350/480 images (35s)",
        f"phase  {tid}  extracting features 480/480 images (45s)",
        f"phase  {tid}  training epoch 1 · step 0/12 (0s)",
    ]


def _epoch(epoch: int, val: float, best: float, seconds: float = 10.0) -> dict[str, float]:
    return {"epoch": epoch, "train_loss": 0.5, "val_loss": val, "best_val_loss": best, "epoch_time_s": seconds}


def test_time_left_is_two_labelled_bounds_for_each_trial_and_the_sweep(
    tmp_path: Path, clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    trials = _trials(tmp_path, 3)
    tid = trials[0].config[GRID_KEY]["trial_id"]
    view = ProgressView(str(tmp_path / "store"), 3, interval_s=0, live=False, bounds=[(10, 5)] * 3)
    view.trial_started(trials[0])
    view.trial_result(trials[0], _epoch(0, 0.5, 0.5))
    view.trial_result(trials[0], _epoch(1, 0.6, 0.5))  # no better: patience 5 -> 4 left
    view.trial_result(trials[0], _epoch(2, 0.7, 0.5))  # 3 left
    last = _lines(capsys)[-1]
    # 3 epochs done of at most 10 at 10 s each: 3 more if validation never improves again, 7 more at most
    assert last.endswith("left 30s if no gain (early stop), at most 1m10s (max epochs)")
    assert "patience left 3" in last
    # the sweep: this trial's bounds plus two not started (earliest patience + 1 = 6 epochs, latest 10 each)
    assert view.sweep_left_s() == (30 + 2 * 60, 70 + 2 * 100)
    assert "sweep left ≈2m30s if trials stop early, ≈4m30s at max epochs" in view.header()
    view.trial_result(trials[0], _epoch(3, 0.4, 0.4))  # improved: the patience is whole again
    assert view.running[tid].left_s(now=clock.now) == (50, 60)
    clock.now += 4  # 4 s into the next epoch: both bounds come closer
    assert view.running[tid].left_s(now=clock.now) == (46, 56)


def test_the_terminal_table_has_a_phase_column_and_explains_its_bounds(tmp_path: Path, clock: Clock) -> None:
    [trial] = _trials(tmp_path, 1)
    tid = trial.config[GRID_KEY]["trial_id"]
    view = ProgressView(str(tmp_path / "store"), 1, interval_s=30, live=False, bounds=[(10, 5)])
    view.trial_started(trial)
    view.phases({tid: Phase("extracting features", 120, 480)})
    clock.now += 95
    console = Console(file=io.StringIO(), width=250, record=True)
    console.print(view._table())
    text = console.export_text()
    assert "phase" in text and "extracting features 120/480 images (1m35s)" in text
    assert "left if no gain" in text and "left at most" in text and "max_epochs" in text


def test_a_scheduler_stop_and_an_interruption_are_told_apart(tmp_path: Path) -> None:
    from vfm_ablate.sweep.outcome import SweepOutcome, TrialOutcome, end_tags, outcome_rows

    planned = plan(
        parse_sweep(
            {
                "name": "o",
                "base": tiny_base({"max_epochs": 3}),
                "axes": {"seed": [0, 1, 2]},
                "datasets": {"sa": TINY_DATA},
            },
            tmp_path / "o.yaml",
        )
    ).trials
    trials = [
        TrialOutcome(planned[0], planned[0].trial_id, planned[0].spec, "FINISHED", {"iou_fg": 0.5, "epochs_run": 3}),
        TrialOutcome(planned[1], planned[1].trial_id, planned[1].spec, "STOPPED", ended="stopped by ASHA at epoch 2"),
        TrialOutcome(planned[2], planned[2].trial_id, planned[2].spec, "NOT RUN", ended="interrupted at epoch 1"),
    ]
    outcome = SweepOutcome("o", str(tmp_path), [], trials)
    assert [row["status"] for row in outcome_rows(outcome)] == [
        "FINISHED",
        "stopped by ASHA at epoch 2",
        "interrupted at epoch 1",
    ]
    assert end_tags(outcome) == {
        planned[1].trial_id: {"vfm.stopped_by": "ASHA at epoch 2"},
        planned[2].trial_id: {"vfm.interrupted": "at epoch 1"},
    }
