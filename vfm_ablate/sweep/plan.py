"""Expand a validated sweep into its distinct trials: grid x repeats, settings that cannot matter collapsed,
duplicates dropped by trial id, each trial validated and given its CPU/GPU ask.

    base (partial TrialSpec)  x  axes (grid; a list of grids is their union)  x  repeats (seed AND split_seed)
      -> collapse settings that do not apply (lora.* unless regime is lora; alignment options of methods not in
         use; data.target when no alignment setting reads target images; sampling/weights with one dataset in the
         batches) -> de-duplicate by TrialSpec.trial_id() -> one PlannedTrial per distinct trial.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import product
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..config import (
    ALIGNMENT_OPTIONS,
    SAMPLING_KEYS,
    AlignmentSpec,
    DataSpec,
    LoraSpec,
    TrialSpec,
    inapplicable_settings,
    labelled_is_zero,
    lora_applies,
)
from ..data.entries import DatasetEntry, resolve_dataset
from ..errors import ConfigError
from ..models.registry import BackboneEntry, get_entry
from ..overrides import set_dotted
from ..validation import format_validation_error
from .labels import SweepLabels, TrialLabel, label_trials
from .spec import Distribution, SweepSpec, load_sweep


@dataclass(frozen=True)
class TrialResources:
    cpu: float
    gpu: float

    def describe(self) -> str:
        return f"{self.cpu:g} CPU, {self.gpu:g} GPU"


@dataclass(frozen=True)
class PlannedTrial:
    """One distinct trial (a grid point in search mode) with its label and the resources it asks Ray for."""

    spec: TrialSpec
    trial_id: str
    resources: TrialResources
    label: TrialLabel
    search_space: dict[str, Distribution] = field(default_factory=dict)  # search mode: dims that apply here


@dataclass(frozen=True)
class SweepPlan:
    """A sweep expanded once: its distinct trials, what the expansion collapsed, and the backbone / dataset entries
    the trials read (relative paths made absolute here, on the driver: trials run in other folders and on other
    nodes, so they never resolve a name or a path themselves). Every command plans once and hands this on."""

    sweep: SweepSpec
    trials: list[PlannedTrial]
    grid_points: int  # combinations before collapsing/de-duplication
    collapsed: int  # combinations dropped because they became identical to another trial
    collapse_reasons: dict[str, int]  # which rule dropped which axis value, counted per combination
    backbones: dict[str, BackboneEntry]
    datasets: dict[str, DatasetEntry]
    labels: SweepLabels  # what tells the trials apart: table columns, UI columns, the settings they share

    @property
    def num_trials(self) -> int:
        return len(self.trials)

    @property
    def specs(self) -> list[TrialSpec]:
        return [t.spec for t in self.trials]

    def with_trials(self, trials: list[PlannedTrial]) -> SweepPlan:
        """The same plan with other resources for its trials (measured GPU shares, a cluster without GPUs)."""
        return replace(self, trials=trials)


def load_plan(path: str | Path) -> SweepPlan:
    """Read, validate and expand a sweep file: what every command that takes a sweep file starts with."""
    return plan(load_sweep(path))


def plan(sweep: SweepSpec) -> SweepPlan:
    """Expand, collapse, de-duplicate and validate every trial of the sweep; labels and resources included.

    Fast enough for any grid run.max_trials admits (benchmarks/bench_plan.py): a combination whose collapsed settings
    were met before is neither validated nor hashed again, and what depends on a name or a section alone (entries,
    resources, the alignment section) is worked out once per distinct value."""
    seen: dict[str, tuple[TrialSpec, TrialResources, dict[str, Distribution]]] = {}
    known: set[str] = set()  # collapsed settings already planned, as text (repr: equal text, equal settings)
    reasons: dict[str, int] = {}
    lookups = _Lookups(sweep)
    combos = 0
    for g, grid in enumerate(sweep.grids):
        keys = list(grid)
        for values in product(*(grid[k] for k in keys)):
            assignment = dict(zip(keys, values))
            for rep in range(sweep.repeats):
                combos += 1
                data, dropped, values = _collapse(_trial_data(sweep, assignment, rep), lookups)
                for reason in dropped:
                    reasons[reason] = reasons.get(reason, 0) + 1

                def where(g: int = g, assignment: dict[str, Any] = assignment, rep: int = rep) -> str:
                    return _where(sweep, g, assignment, rep)

                data_values = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("data.")}
                if data_values:  # together: `weights` without `sampling: weighted` contradict each other
                    lookups.check_dropped("data", data_values, where)
                for key, value in values.items():
                    if not key.startswith("data."):
                        lookups.check_dropped(key, value, where)
                text = repr(data)
                if text in known:
                    continue
                known.add(text)

                try:
                    spec = TrialSpec.model_validate(data)
                except ValidationError as err:
                    raise ConfigError(format_validation_error(TrialSpec, err, where())) from None
                lookups.check_names(spec, where)
                tid = spec.trial_id()
                if tid in seen:
                    continue
                seen[tid] = (spec, lookups.resources(spec, where), _applicable_space(sweep, spec))
    searched = tuple(sweep.search.space) if sweep.search is not None else ()
    labels = label_trials([spec for spec, _, _ in seen.values()], list(seen), searched)
    trials = [
        PlannedTrial(spec=spec, trial_id=tid, resources=res, label=label, search_space=space)
        for (tid, (spec, res, space)), label in zip(seen.items(), labels.trials)
    ]
    from .inputs import resolve_entries

    backbones, datasets = resolve_entries([t.spec for t in trials], sweep.backbones, sweep.datasets)
    return SweepPlan(
        sweep=sweep,
        trials=trials,
        grid_points=combos,
        collapsed=combos - len(seen),
        collapse_reasons=reasons,
        backbones=backbones,
        datasets=datasets,
        labels=labels,
    )


def _where(sweep: SweepSpec, grid: int, assignment: dict[str, Any], rep: int) -> str:
    parts = [f"{k}={v}" for k, v in assignment.items()]
    if sweep.repeats > 1:
        parts.append(f"repeat={rep}")
    prefix = f"axes[{grid}] " if isinstance(sweep.axes, list) else ""
    return f"{sweep.source} [trial {prefix}{', '.join(parts) or 'base'}]"


class _Lookups:
    """What planning looks up by a name or a section alone, worked out once per distinct value for the whole sweep:
    backbone and dataset entries (the built-ins' folders are found on disk), resources, alignment sections."""

    def __init__(self, sweep: SweepSpec) -> None:
        self.sweep = sweep
        self._names: set[tuple[str, str]] = set()
        self._resources: dict[tuple[str, str], TrialResources] = {}
        self._alignment: dict[str, AlignmentSpec | None] = {}
        self._inapplicable: dict[str, list[str]] = {}
        self._dropped: set[str] = set()

    def check_names(self, spec: TrialSpec, where: Callable[[], str]) -> None:
        """Unknown backbone/dataset names fail here, before Ray starts, naming the trial (TrialSpec itself rejects
        impossible settings, e.g. a balanced batch that does not split evenly)."""
        for kind, name in (("backbone", spec.backbone), *(("dataset", d) for d in spec.dataset_names())):
            if (kind, name) in self._names:
                continue
            try:
                if kind == "backbone":
                    get_entry(name, self.sweep.backbones)
                else:
                    resolve_dataset(name, self.sweep.datasets)
            except ConfigError as err:
                raise ConfigError(f"{where()}: {err}") from None
            self._names.add((kind, name))

    def resources(self, spec: TrialSpec, where: Callable[[], str]) -> TrialResources:
        key = (spec.backbone, spec.regime)
        if key not in self._resources:
            entry = get_entry(spec.backbone, self.sweep.backbones)
            self._resources[key] = resources_for(spec, entry, self.sweep, where())
        return self._resources[key]

    def alignment(self, section: Any) -> AlignmentSpec | None:
        key = repr(section)
        if key not in self._alignment:
            try:
                self._alignment[key] = AlignmentSpec.model_validate(section)
            except ValidationError:  # invalid: the trial's own validation reports it
                self._alignment[key] = None
        return self._alignment[key]

    def check_dropped(self, key: str, value: Any, where: Callable[[], str]) -> None:
        """A setting that does not apply to a trial is dropped, but its value must still be one the setting takes: a
        misspelt `sampling: balance` on a single-dataset trial is a typo waiting for the paired one."""
        text = f"{key}={value!r}"
        if text in self._dropped:
            return
        model, data = _setting_model(key, value)
        try:
            model.model_validate(data)
        except ValidationError as err:
            message = format_validation_error(model, err, f"{where()} [{key}, which does not apply to this trial]")
            raise ConfigError(message) from None
        self._dropped.add(text)

    def inapplicable(
        self, regime: Any, alignment: AlignmentSpec, train: list[Any], target: list[Any], zero_shot: list[Any]
    ) -> list[str]:
        key = repr((regime, id(alignment), train, target, zero_shot))  # alignment specs are cached: ids are stable
        if key not in self._inapplicable:
            self._inapplicable[key] = inapplicable_settings(regime, alignment, train, target, zero_shot)
        return self._inapplicable[key]


def _setting_model(key: str, value: Any) -> tuple[type[BaseModel], Any]:
    """The section model that validates a dropped setting on its own (the dropped data.* settings together, as
    "data"), and the data to validate."""
    if key == "lora":
        return LoraSpec, value
    if key.startswith("alignment."):
        return AlignmentSpec, {key.split(".", 1)[1]: value}
    return DataSpec, {"train": ["x"], **value}  # "data": the dropped data.* settings, checked together


def _copy(value: Any) -> Any:
    """A copy of plain data (what deepcopy does for YAML's dicts, lists and scalars, several times faster)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _trial_data(sweep: SweepSpec, assignment: dict[str, Any], rep: int) -> dict[str, Any]:
    data = _copy(sweep.base)
    for key, value in assignment.items():
        _merge_dotted(data, key, value)
        if key == "seed" and "split_seed" not in assignment:
            # a repeat must differ in its data split too (SPEC pitfall 4), not only in its init/order seed
            _merge_dotted(data, "split_seed", value)
    if "seed" not in assignment:
        data["seed"] = int(data.get("seed", 0)) + rep
        data["split_seed"] = int(data.get("split_seed", 0)) + rep
    return data


def _merge_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Section values (dicts) merge into the base section; anything else replaces the setting."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    leaf = parts[-1]
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        merged = _copy(node[leaf])
        for k, v in value.items():
            _merge_dotted(merged, k, v)
        node[leaf] = merged
    else:
        set_dotted(data, key, _copy(value))


def _collapse(data: dict[str, Any], lookups: _Lookups) -> tuple[dict[str, Any], set[str], dict[str, Any]]:
    """Drop settings that cannot affect this trial (`config.inapplicable_settings`), so trials differing only in
    them share one trial_id.

    LoRA settings only matter in the lora regime; an alignment option only with its method; unlabelled target
    datasets only when an alignment setting reads their images (the test datasets stay as they were);
    data.normalisation not under z-scoring; sampling (and its weights) only with several datasets in the batches.
    Returns the collapsed data, the reasons, and the dropped settings' values (still checked by the caller).
    """
    dropped: set[str] = set()
    values: dict[str, Any] = {}
    regime = data.get("regime", TrialSpec.model_fields["regime"].default)
    alignment = lookups.alignment(data.get("alignment", {}))
    section = data.get("data") if isinstance(data.get("data"), dict) else {}
    train = section.get("train") if isinstance(section.get("train"), list) else None
    target = section.get("target") if isinstance(section.get("target"), list) else []
    labelled = section.get("labelled") if isinstance(section.get("labelled"), dict) else {}
    zero_shot = [d for d, v in labelled.items() if labelled_is_zero(v)]
    if alignment is None or train is None:  # invalid: the trial's own validation reports it
        if not lora_applies(str(regime)) and "lora" in data:
            values["lora"] = data.pop("lora")
            dropped.add(f"lora settings dropped for regime '{regime}'")
        return data, dropped, values
    for key in lookups.inapplicable(regime, alignment, train, target, zero_shot):
        if key == "lora" and "lora" in data:
            values["lora"] = data.pop("lora")
            dropped.add(f"lora settings dropped for regime '{regime}'")
        elif key.startswith("alignment.") and key.split(".", 1)[1] in data.get("alignment", {}):
            values[key] = data["alignment"].pop(key.split(".", 1)[1])
            parent = ALIGNMENT_OPTIONS[key.split(".", 1)[1]][0]
            dropped.add(f"{key} dropped: not used with alignment.{parent} '{getattr(alignment, parent)}'")
        elif key == "data.target" and "target" in section:
            if target and section.get("test") is None:
                section["test"] = [*train, *target]  # the targets are still tested
            values[key] = section.pop("target")
            dropped.add("data.target dropped: no alignment setting reads target images")
        elif key == "data.normalisation" and "normalisation" in section:
            values[key] = section.pop("normalisation")
            dropped.add("data.normalisation dropped: alignment.input 'zscore' replaces it")
        elif key in SAMPLING_KEYS and key.split(".", 1)[1] in section:
            value = values[key] = section.pop(key.split(".", 1)[1])
            if key == "data.weights" or value != "natural":
                dropped.add("sampling dropped for a single train dataset")
    if data.get("alignment") == {}:
        del data["alignment"]
    return data, dropped, values


def _applicable_space(sweep: SweepSpec, spec: TrialSpec) -> dict[str, Distribution]:
    if sweep.search is None:
        return {}
    space = dict(sweep.search.space)
    unused = spec.inapplicable_settings()
    return {k: v for k, v in space.items() if not any(k == u or k.startswith(u + ".") for u in unused)}


# --------------------------------------------------------------------------------------------- resources


def resources_for(spec: TrialSpec, entry: BackboneEntry, sweep: SweepSpec, where: str = "") -> TrialResources:
    """CPU/GPU for one trial: the entry's frozen or adapted GPU fraction, then the sweep's overrides in order."""
    res = sweep.resources
    gpu = entry.gpu_fraction(spec.regime)
    if res.gpu != "auto":
        gpu = float(res.gpu)
    cpu = res.cpu
    for rule in res.overrides:
        if rule.matches(spec.backbone, spec.regime):
            cpu = rule.cpu if rule.cpu is not None else cpu
            gpu = rule.gpu if rule.gpu is not None else gpu
    if gpu > 1 and gpu != int(gpu):
        raise ConfigError(
            f"{where or sweep.source}: a trial of '{spec.backbone}' ({spec.regime}) would ask for {gpu:g} GPUs; "
            "Ray takes a fraction up to 1 or a whole number of GPUs (set resources.overrides or the entry's "
            "gpu_fraction_frozen/gpu_fraction_adapted)"
        )
    return TrialResources(cpu=float(cpu), gpu=float(gpu))


def without_gpus(trials: list[PlannedTrial]) -> list[PlannedTrial]:
    """The same trials asking for no GPU: what runs on a cluster that has none."""
    return [replace(t, resources=TrialResources(cpu=t.resources.cpu, gpu=0.0)) for t in trials]
