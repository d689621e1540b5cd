"""Backbone registry: the built-in entries and those a user registers, looked up by name; adding a backbone is
adding an entry (models/entry.py)."""

from __future__ import annotations

from ..errors import ConfigError
from ..validation import suggest
from .builtin_backbones import BUILTIN_ENTRIES
from .entry import BackboneEntry

__all__ = ["BackboneEntry", "get_entry", "list_entries", "register"]

_REGISTRY: dict[str, BackboneEntry] = {}


def register(entry: BackboneEntry) -> BackboneEntry:
    """Add an entry (built-in or user); re-registering the same name with other facts is an error."""
    existing = _REGISTRY.get(entry.name)
    if existing is not None and existing != entry:
        raise ConfigError(f"backbone '{entry.name}' is already registered with different facts")
    _REGISTRY[entry.name] = entry
    return entry


def get_entry(name: str, extra: dict[str, BackboneEntry] | None = None) -> BackboneEntry:
    """Look up `name` among `extra` (e.g. a sweep file's inline entries) then the built-ins."""
    if extra and name in extra:
        return extra[name]
    if name in _REGISTRY:
        return _REGISTRY[name]
    raise ConfigError(suggest(name, set(_REGISTRY) | set(extra or {}), "backbone"))


def list_entries() -> list[BackboneEntry]:
    return list(_REGISTRY.values())


for _entry in BUILTIN_ENTRIES:
    register(_entry)
