"""A single-trial file: TrialSpec keys at top level, plus optional inline `backbones:` and `datasets:` entries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import TrialSpec
from .data.entries import DatasetEntry, builtin_datasets
from .errors import ConfigError
from .models.registry import BackboneEntry, list_entries
from .validation import name_problem, validate


@dataclass(frozen=True)
class TrialFile:
    spec: TrialSpec
    backbones: dict[str, BackboneEntry]
    datasets: dict[str, DatasetEntry]


def _builtins(model: type) -> tuple[str, dict[str, Any]]:
    """(what an entry of `model` is called, the built-in entries by name)."""
    if model is DatasetEntry:
        return "dataset", dict(builtin_datasets())
    return "backbone", {e.name: e for e in list_entries()}


def inline_entries(model: type, raw: Any, section: str, source: str) -> dict:
    """Validate a `name: {facts}` mapping of inline entries; the mapping key is the entry's name. A name must be one
    MLflow takes in a metric name (`validation.name_problem`), and must not be a built-in's: an entry that replaced a
    built-in would log its results under the built-in's name (one with the built-in's very facts is harmless). A
    backbone entry may leave out what its library's model says (models/infer: patch size, dim, prefix tokens, LoRA
    targets, ...)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{section}' must be a mapping of name -> entry")
    kind, builtins = _builtins(model)
    out = {}
    for name, facts in raw.items():
        if (problem := name_problem(name)) is not None:
            raise ConfigError(f"{source}: {section}.{str(name)[:80]!r}: not a usable {kind} name: {problem}")
        if not isinstance(facts, dict):
            raise ConfigError(f"{source}: {section}.{name} must be a mapping of facts")
        if "name" in facts and facts["name"] != name:
            raise ConfigError(f"{source}: {section}.{name} has name '{facts['name']}'; drop it or make them equal")
        where = f"{source} [{section}.{name}]"
        if model is BackboneEntry:
            from .models.infer import complete_entry

            entry = complete_entry({**facts, "name": name}, where)
        else:
            entry = validate(model, {**facts, "name": name}, where)
        if name in builtins and entry != builtins[name]:
            raise ConfigError(
                f"{source}: {section}.{name}: '{name}' is a built-in {kind}, and this entry states other facts; it "
                f"would replace the built-in, and its results would be logged under the built-in's name: give it a "
                f"name of its own (e.g. '{name}_mine')"
            )
        out[name] = entry
    return out


def parse_trial_file(data: dict[str, Any], source: str | Path) -> TrialFile:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of trial settings")
    data = dict(data)
    backbones = inline_entries(BackboneEntry, data.pop("backbones", None), "backbones", str(source))
    datasets = inline_entries(DatasetEntry, data.pop("datasets", None), "datasets", str(source))
    return TrialFile(validate(TrialSpec, data, source), backbones, datasets)
