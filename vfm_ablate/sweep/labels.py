"""What tells one trial of a sweep from another, in words: the columns of the dry-run and result tables, the
one-line label of the live view, the run name in the MLflow UI (the headline IoU beside them: metric_names).

Labels are made once, by the planner, for every trial of the sweep together, and travel with the trial (into Ray's
config); nobody downstream rebuilds them from a spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import TrialSpec
from ..metric_names import HEADLINE, headline_iou

__all__ = ["HEADLINE", "LABEL_COLUMNS", "TrialLabel", "headline_iou", "label_trials", "sampled_text", "trial_label"]
# the keys of `TrialLabel.columns`, in order
LABEL_COLUMNS = ("id", "backbone", "regime", "rank", "train", "sampling", "alignment", "seed")


@dataclass(frozen=True)
class TrialLabel:
    """A trial in words: `columns` for tables, `short` for the live view, `run_name` for the MLflow UI."""

    columns: dict[str, str]
    short: str
    run_name: str


def trial_label(s: TrialSpec, trial_id: str) -> TrialLabel:
    """The label of one trial. `train` shows an unlabelled target as `source→target`, and a train dataset's labelled
    images (data.labelled) as `lucchi_pp[4]`."""
    labelled = s.data.labelled
    train = [f"{d}[{labelled[d]:g}]" if d in labelled else d for d in s.data.train]
    columns = {
        "id": trial_id,
        "backbone": s.backbone,
        "regime": s.regime,
        "rank": str(s.lora.rank) if s.lora_applies else "-",
        "train": "+".join(train) + (f"→{'+'.join(s.data.target)}" if s.data.target else ""),
        "sampling": s.data.sampling if s.sampling_applies() else "-",
        "alignment": s.alignment.label() if s.alignment.active else "-",
        "seed": str(s.seed) if s.seed == s.split_seed else f"{s.seed}/{s.split_seed}",
    }
    return TrialLabel(columns, _short(columns), _run_name(columns))


def label_trials(specs: list[TrialSpec], trial_ids: list[str]) -> list[TrialLabel]:
    """The labels of a sweep's trials, made together (what tells them apart depends on all of them)."""
    return [trial_label(s, tid) for s, tid in zip(specs, trial_ids)]


def _short(c: dict[str, str]) -> str:
    """One line for progress output, e.g. `dinov2_vitl14_reg lora r16 lucchi_pp+vnc balanced seed 3`."""
    parts = [c["backbone"], c["regime"]]
    if c["rank"] != "-":
        parts.append(f"r{c['rank']}")
    parts.append(c["train"])
    parts += [c[k] for k in ("sampling", "alignment") if c[k] != "-"]
    parts.append(f"seed {c['seed']}")
    return " ".join(parts)


def _run_name(c: dict[str, str]) -> str:
    """What the trial is, for the UI's run list: backbone · regime (rank) · train data (sampling) · seed."""
    regime = c["regime"] + (f" (r{c['rank']})" if c["rank"] != "-" else "")
    train = c["train"] + (f" ({c['sampling']})" if c["sampling"] != "-" else "")
    return f"{c['backbone']} · {regime} · {train} · seed {c['seed']}"


_SHORT_KEYS = {"alpha": "α", "loss_weight": "λ", "weight_decay": "wd", "rank": "r"}


def sampled_text(sampled: dict[str, Any]) -> str:
    """Search-sampled values, short: `lr 6.8e-4 α 48`."""
    names = {k: k.rsplit(".", 1)[-1] for k in sampled}
    return " ".join(f"{_SHORT_KEYS.get(names[k], names[k])} {_value(v)}" for k, v in sampled.items())


def _value(v: Any) -> str:
    v = v.item() if hasattr(v, "item") else v  # numpy scalars from the searcher
    if isinstance(v, float):
        text = f"{v:.1e}" if v != 0 and abs(v) < 1e-2 else f"{v:.3g}"
        return text.replace("e-0", "e-").replace("e+0", "e+")
    return str(v)
