"""What tells one trial of a sweep from another, in words: the columns of the dry-run and result tables, the
one-line label of the live view, the run name and the columns of the MLflow UI (the headline IoU beside them:
metric_names).

Labels are made once, by the planner, for every trial of the sweep together: what tells trials apart depends on
all of them. A setting shows in a run name (and a table column, and a UI column) exactly when it varies across the
sweep's trials -- backbone, regime, LoRA rank, training data (and its unlabelled target), sampling, the alignment
method, resize, seed, or any other axis -- and settings equal for every trial stay out (the tables say them once,
as `same for every trial`). Search-sampled values vary by definition: they join the name of their sample
(`lr 6.8e-4 α 48`, made where a sample is decoded, sweep/trainable). Labels travel with the trial (into Ray's
config); nobody downstream rebuilds them from a spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import TrialSpec
from ..metric_names import HEADLINE, headline_iou
from ..tracking.tags import ALIGNMENT_TAG

__all__ = [
    "HEADLINE",
    "LABEL_COLUMNS",
    "SweepLabels",
    "TrialLabel",
    "headline_iou",
    "label_trials",
    "sampled_text",
    "short_value",
    "trial_label",
]
LABELLED_KEY = "data.labelled."
NA = "-"  # a setting that cannot change this trial (e.g. the LoRA rank of a frozen trial)
ALIGNMENT_TAG_COLUMN = ("tags", ALIGNMENT_TAG)  # the alignment method's label: one UI column, logged as a tag


@dataclass(frozen=True)
class Setting:
    """One named setting of the labels: how a trial's value reads (`value`, NA where it cannot apply), how it reads
    inside a run name (`named`), and where the MLflow UI shows it (`ui`: (kind, key) columns)."""

    column: str
    keys: tuple[str, ...]  # the flat TrialSpec keys it covers (the rest become settings of their own)
    value: Callable[[TrialSpec], str]
    named: Callable[[str], str] = lambda v: v
    ui: tuple[tuple[str, str], ...] = ()


def _train(s: TrialSpec) -> str:
    """The training data: a train dataset with fewer labelled images than all as `lucchi_pp[4]` (data.labelled), an
    unlabelled target as `source→target`."""
    labelled = s.data.labelled
    train = [f"{d}[{labelled[d]:g}]" if d in labelled else d for d in s.data.train]
    target = f"→{'+'.join(s.data.target)}" if s.data.target and s.uses_target_images() else ""
    return "+".join(train) + target


def _resize(s: TrialSpec) -> str:
    r = s.data.resize
    if r.policy == "fixed" and r.size is not None:
        return f"{r.size[0]}x{r.size[1]}"
    if r.policy == "longest_edge":
        return f"longest {r.target}" if r.target is not None else "longest default"
    return r.policy


def _test(s: TrialSpec) -> str:
    """An explicit test list other than the default one (train + target datasets); NA otherwise: the train column
    already says what a default test reads."""
    data = s.data
    if data.test is None or list(data.test) == [*data.train, *data.target]:
        return NA
    return "+".join(data.test)


def _seed(s: TrialSpec) -> str:
    return str(s.seed) if s.seed == s.split_seed else f"{s.seed}/{s.split_seed}"


def _sampling(s: TrialSpec) -> str:
    if not s.sampling_applies():
        return NA
    weights = f" {':'.join(f'{w:g}' for w in s.data.weights)}" if s.data.weights else ""
    return s.data.sampling + weights


# the settings with a name of their own, in the order they appear in names and tables; any other flat key that
# varies becomes a setting too (`_generic`)
SETTINGS: tuple[Setting, ...] = (
    Setting("backbone", ("backbone",), lambda s: s.backbone, ui=(("params", "backbone"),)),
    Setting("regime", ("regime",), lambda s: s.regime, ui=(("params", "regime"),)),
    Setting(
        "rank",
        ("lora.rank",),
        lambda s: str(s.lora.rank) if s.lora_applies else NA,
        lambda v: f"r{v}",
        (("params", "lora.rank"),),
    ),
    Setting(
        "train",
        ("data.train", "data.target", "data.labelled."),
        _train,
        ui=(("params", "data.train"), ("params", "data.target")),
    ),
    Setting("sampling", ("data.sampling", "data.weights"), _sampling, ui=(("params", "data.sampling"),)),
    Setting(  # the datasets tested, where a trial names them (the default, its train and target data, says nothing new)
        "test",
        ("data.test",),
        _test,
        lambda v: f"test {v}",
        (("params", "data.test"),),
    ),
    Setting("alignment", ("alignment.",), lambda s: s.alignment.label(), ui=(ALIGNMENT_TAG_COLUMN,)),
    Setting(
        "resize",
        ("data.resize.",),
        _resize,
        lambda v: f"resize {v}",
        (("params", "data.resize.policy"), ("params", "data.resize.target"), ("params", "data.resize.size")),
    ),
    Setting("seed", ("seed", "split_seed"), _seed, lambda v: f"seed {v}", (("params", "seed"),)),
)
# the fixed columns of results.csv (and of every TrialLabel.columns), in order; varying extras follow them
LABEL_COLUMNS = ("id", *(s.column for s in SETTINGS))
# what a trial is when nothing varies (a sweep of one trial): these name it
FALLBACK = ("backbone", "regime", "train")
_SHORT_KEYS = {"alpha": "α", "loss_weight": "λ", "weight_decay": "wd", "rank": "r"}


@dataclass(frozen=True)
class TrialLabel:
    """A trial in words: `columns` (every setting's value, for tables and results.csv), `short` for the live view,
    `run_name` for the MLflow UI (both: the settings that vary across the sweep)."""

    columns: dict[str, str]
    short: str
    run_name: str


@dataclass(frozen=True)
class SweepLabels:
    """The labels of a sweep's trials and what tells them apart: `shown` (the table columns, `id` first),
    `ui_columns` (the MLflow UI's (kind, key) columns of those settings), `common` (the settings equal for every
    trial, in words)."""

    trials: list[TrialLabel]
    shown: tuple[str, ...]
    ui_columns: tuple[tuple[str, str], ...]
    common: str
    varying: tuple[str, ...] = field(default=())  # the shown settings that vary (shown may be the fallback)


def label_trials(specs: list[TrialSpec], trial_ids: list[str], searched: tuple[str, ...] = ()) -> SweepLabels:
    """The labels of a sweep's trials, made together: a setting is named when its value differs between trials.
    `searched`: the search-space keys (their sampled values tell a grid point's samples apart, so a sweep whose
    grid points are all alike still names its trials by them, not by the fallback)."""
    settings = [*SETTINGS, *_generic(specs, searched)]
    values = [{st.column: st.value(s) for st in settings} for s in specs]
    # varies: two trials where the setting applies differ in it (a rank that only lora trials have, all 16, does not
    # tell trials apart: their regime does)
    varying = tuple(st.column for st in settings if len({v[st.column] for v in values} - {NA}) > 1)
    named = varying if varying or searched else FALLBACK
    by_column = {st.column: st for st in settings}
    labels = []
    for tid, vals in zip(trial_ids, values):
        parts = [by_column[c].named(vals[c]) for c in named if vals[c] != NA]
        labels.append(TrialLabel({"id": tid, **vals}, " ".join(parts), " · ".join(parts)))
    ui = tuple(dict.fromkeys(col for c in named for col in by_column[c].ui))
    if "train" in named:  # data.labelled is one flat key per dataset (`data.labelled.lucchi_pp`)
        ui += tuple(("params", f"{LABELLED_KEY}{d}") for d in dict.fromkeys(d for s in specs for d in s.data.labelled))
    ui += tuple(("params", k) for k in searched)
    alike = {c: {v[c] for v in values} - {NA} for c in by_column if c not in named}
    common = ", ".join(f"{c} {next(iter(vals))}" for c, vals in alike.items() if len(vals) == 1)
    return SweepLabels(labels, ("id", *named), ui, common, varying)


def trial_label(s: TrialSpec, trial_id: str) -> TrialLabel:
    """The label of one trial on its own (a Ray experiment of an earlier version: nothing to compare it with)."""
    return label_trials([s], [trial_id]).trials[0]


def _generic(specs: list[TrialSpec], searched: tuple[str, ...]) -> list[Setting]:
    """A setting for every other flat key that varies across the trials (`lr`, `val_fraction`, `weights`, ...):
    NA where the trial's rules say it cannot apply."""
    covered = [k for st in SETTINGS for k in st.keys]
    flats = [s.flat_params() for s in specs]
    keys = [
        k
        for k in dict.fromkeys(k for f in flats for k in f)
        if k not in searched
        and not any(k == c or (c.endswith(".") and k.startswith(c)) for c in covered)
        and len({f.get(k) for f in flats}) > 1
    ]
    short = [k.rsplit(".", 1)[-1] for k in keys]
    out = []
    for key, name in zip(keys, short):
        column = name if short.count(name) == 1 and name not in LABEL_COLUMNS else key
        out.append(
            Setting(
                column,
                (key,),
                lambda s, key=key: _flat_value(s, key),
                lambda v, name=name: f"{_SHORT_KEYS.get(name, name)} {v}",
                (("params", key),),
            )
        )
    return out


def _flat_value(s: TrialSpec, key: str) -> str:
    if any(key == u or key.startswith(u + ".") for u in s.inapplicable_settings()):
        return NA
    return short_value(_number(s.flat_params().get(key, "")))


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def sampled_text(sampled: dict[str, Any]) -> str:
    """Search-sampled values, short: `lr 6.8e-4 α 48`."""
    names = {k: k.rsplit(".", 1)[-1] for k in sampled}
    return " ".join(f"{_SHORT_KEYS.get(names[k], names[k])} {short_value(v)}" for k, v in sampled.items())


def short_value(v: Any) -> str:
    """A value as names and tables show it: `6.8e-4`, `48`, `0.25`."""
    v = v.item() if hasattr(v, "item") else v  # numpy scalars from the searcher
    if isinstance(v, float):
        text = f"{v:.1e}" if v != 0 and abs(v) < 1e-2 else f"{v:.3g}"
        return text.replace("e-0", "e-").replace("e+0", "e+")
    return str(v)
