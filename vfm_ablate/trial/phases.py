"""What a trial is doing now: its phases (loading data, building the model, extracting features, training epoch k,
validating, testing, diagnostics, writing outputs) with progress inside a phase (`n / N images`, `step n / N`).

The trial engine says each phase to its reporter's optional `phase(Phase)` method; the reporter decides how often
to pass it on (a sweep's trials forward it to the driver's live view, `vfm-ablate train` prints it). A reporter
without `phase` hears only epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

LOADING = "loading data"
BUILDING = "building model"
EXTRACTING = "extracting features"
TRAINING = "training"
VALIDATING = "validating"
TESTING = "testing"
DIAGNOSTICS = "diagnostics"
WRITING = "writing outputs"
UPLOADING = "uploading outputs"  # a sweep's trial, after the engine: outputs to the sweep's storage and MLflow

EVERY_EPOCH = (TRAINING, VALIDATING)  # phases that come round every epoch (a view's epoch lines say them)
# what `done / total` counts in each phase that has progress
UNITS = {EXTRACTING: "images", TESTING: "images"}


@dataclass(frozen=True)
class Phase:
    """One phase of a trial: `kind` (a name above), progress `done / total` (0 / 0: none), the 1-based epoch of a
    training or validation phase."""

    kind: str
    done: int = 0
    total: int = 0
    epoch: int | None = None

    @property
    def step(self) -> tuple[str, int | None]:
        """What changes when a new phase starts (progress inside one does not)."""
        return self.kind, self.epoch

    @property
    def finished(self) -> bool:
        return self.total > 0 and self.done >= self.total

    def text(self) -> str:
        """`extracting features 120/480 images`, `training epoch 3 · step 40/200`, `diagnostics`."""
        name = self.kind + (f" epoch {self.epoch}" if self.epoch is not None else "")
        if self.total <= 0:
            return name
        if self.kind in UNITS:
            return f"{name} {self.done}/{self.total} {UNITS[self.kind]}"
        return f"{name} · step {self.done}/{self.total}"


class Phases:
    """The engine's side: passes phases to a reporter that has a `phase` method, and to nobody otherwise."""

    def __init__(self, reporter: object | None) -> None:
        self._say = getattr(reporter, "phase", None)

    def __call__(self, kind: str, done: int = 0, total: int = 0, epoch: int | None = None) -> None:
        if self._say is not None:
            self._say(Phase(kind, done, total, epoch))

    def counter(self, kind: str, total: int, epoch: int | None = None):  # type: ignore[no-untyped-def]
        """A `progress(done)` callback for a loop over `total` things (said at 0 first)."""
        self(kind, 0, total, epoch)
        return lambda done: self(kind, done, total, epoch)
