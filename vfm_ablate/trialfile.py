"""A single-trial file: TrialSpec keys at top level, plus optional inline `backbones:` and `datasets:` entries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import TrialSpec
from .data.entries import DatasetEntry
from .errors import ConfigError
from .models.registry import BackboneEntry
from .validation import validate


@dataclass(frozen=True)
class TrialFile:
    spec: TrialSpec
    backbones: dict[str, BackboneEntry]
    datasets: dict[str, DatasetEntry]


def inline_entries(model: type, raw: Any, section: str, source: str) -> dict:
    """Validate a `name: {facts}` mapping of inline entries; the mapping key is the entry's name. A backbone entry
    may leave out what its library's model says (models/infer: patch size, dim, prefix tokens, LoRA targets, ...)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{section}' must be a mapping of name -> entry")
    out = {}
    for name, facts in raw.items():
        if not isinstance(facts, dict):
            raise ConfigError(f"{source}: {section}.{name} must be a mapping of facts")
        if "name" in facts and facts["name"] != name:
            raise ConfigError(f"{source}: {section}.{name} has name '{facts['name']}'; drop it or make them equal")
        where = f"{source} [{section}.{name}]"
        if model is BackboneEntry:
            from .models.infer import complete_entry

            out[name] = complete_entry({**facts, "name": name}, where)
        else:
            out[name] = validate(model, {**facts, "name": name}, where)
    return out


def parse_trial_file(data: dict[str, Any], source: str | Path) -> TrialFile:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of trial settings")
    data = dict(data)
    backbones = inline_entries(BackboneEntry, data.pop("backbones", None), "backbones", str(source))
    datasets = inline_entries(DatasetEntry, data.pop("datasets", None), "datasets", str(source))
    return TrialFile(validate(TrialSpec, data, source), backbones, datasets)
