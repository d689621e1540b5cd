"""Dotted `key=value` overrides (`optim.lr=1e-4`, `data.train=[vnc,lucchi_pp]`) applied to plain config data."""

from __future__ import annotations

from typing import Any

from .errors import ConfigError
from .yaml_text import parse_yaml


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in nested dicts, creating levels as needed."""
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' holds a value, not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Each override is `dotted.key=YAML value`; validation of the result happens later, at the edge."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected KEY=VALUE, e.g. optim.lr=1e-4")
        key, raw = item.split("=", 1)
        if not all(part.strip() for part in key.split(".")):
            raise ConfigError(f"override '{item}': '{key}' is not a dotted key; expected KEY=VALUE, e.g. optim.lr=1e-4")
        set_dotted(data, key.strip(), parse_yaml(raw, f"override '{item}'"))
    return data
