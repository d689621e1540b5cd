"""A trial's training state: what early stopping tracks, and the resumable checkpoint that carries it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import OptimSpec
from ..errors import ConfigError
from ..models.segmenter import Segmenter
from .files import STATE_FILE


@dataclass
class TrainState:
    """Everything that must survive a restart for the resumed trial to finish exactly like an uninterrupted one."""

    epoch: int = 0  # epochs completed
    best_val_loss: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped: bool = False  # early stopping fired
    history: list[dict[str, float]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None  # trainable weights of the best-validation epoch
    diag_frozen: dict[str, float] | None = None  # diagnostics of the starting backbone (computed once)
    train_time_s: float = 0.0

    def end_epoch(
        self,
        epoch: int,
        train_loss: float,
        val_loss: float,
        model: Segmenter,
        optim: OptimSpec,
        seconds: float,
        extra: dict[str, float] | None = None,
    ) -> dict[str, float]:
        """Early-stopping bookkeeping for one finished epoch; returns the epoch's history record."""
        if val_loss < self.best_val_loss - optim.min_delta:
            self.best_val_loss = val_loss
            self.best_epoch = epoch
            self.bad_epochs = 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.trainable_state_dict().items()}
        else:
            self.bad_epochs += 1
        self.epoch = epoch + 1
        self.stopped = self.bad_epochs >= optim.patience
        self.train_time_s += seconds
        record = {
            "epoch": float(epoch),
            "train_loss": train_loss,
            "val_loss": val_loss,
            "best_val_loss": self.best_val_loss,
            "epoch_time_s": seconds,
            **(extra or {}),
        }
        self.history.append(record)
        return record

    def done(self, max_epochs: int) -> bool:
        return self.stopped or self.epoch >= max_epochs


def save_training_state(
    folder: Path, trial_id: str, model: Segmenter, optimiser: torch.optim.Optimizer, state: TrainState
) -> None:
    """Trainable weights, optimiser, RNG and TrainState (as a plain dict) into `folder`/train_state.pt."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "trial_id": trial_id,
        "model": model.trainable_state_dict(),
        "optimiser": optimiser.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "state": {f.name: getattr(state, f.name) for f in dataclasses.fields(state)},
    }
    torch.save(payload, folder / STATE_FILE)


def load_training_state(folder: Path, trial_id: str, model: Segmenter, optimiser: torch.optim.Optimizer) -> TrainState:
    """Restore what `save_training_state` wrote; a checkpoint of another trial is refused."""
    saved = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)
    if saved["trial_id"] != trial_id:
        raise ConfigError(f"{folder}: checkpoint belongs to trial {saved['trial_id']}, not {trial_id}")
    model.load_trainable_state_dict(saved["model"])
    optimiser.load_state_dict(saved["optimiser"])
    torch.set_rng_state(saved["torch_rng"])
    return TrainState(**saved["state"])
