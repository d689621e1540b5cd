"""Validate plain data (from YAML/CLI) into typed objects once, at the edge, with readable errors."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError
from .yaml_text import parse_yaml

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config object: unknown keys are errors, objects are immutable after validation, and numbers
    are finite (YAML's `.inf` / `.nan` would pass every bound and fail minutes later, inside a trial)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=(), allow_inf_nan=False)


# names that become MLflow metric keys (`iou_fg/<dataset>`), run names, folder and file names: MLflow takes letters,
# digits and _ - . / : and space in a key of at most 250 characters, and refuses '..' in it; a name here is one path
# part, short enough for every key built from two of them
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_NAME_LENGTH = 64


def name_problem(name: object) -> str | None:
    """Why `name` cannot name a dataset or backbone (None: it can)."""
    if not isinstance(name, str) or not name:
        return f"expected a non-empty name, got {name!r}"
    if len(name) > MAX_NAME_LENGTH:
        return f"{len(name)} characters; at most {MAX_NAME_LENGTH} (it becomes part of MLflow metric names)"
    if not NAME_PATTERN.match(name) or ".." in name:
        return (
            "use letters, digits and _ . - only, starting with a letter or digit, without '..' (it becomes part of "
            "MLflow metric names, run names and file names)"
        )
    return None


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Walk `loc` through nested models to find the valid keys where an unknown key appeared."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or current is None:
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            # dict-valued or list-valued fields: descend into their model type if any
            current = None
            continue
        current = _model_in_annotation(fields[part].annotation)
    if current is None or not hasattr(current, "model_fields"):
        return []
    return list(current.model_fields)


def _model_in_annotation(annotation: Any) -> type[BaseModel] | None:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in_annotation(arg)
        if found is not None:
            return found
    return None


def format_validation_error(model: type[BaseModel], err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid {model.__name__}:"]
    for e in err.errors():
        loc = tuple(e.get("loc", ()))
        where = ".".join(str(p) for p in loc) or "(top level)"
        if e.get("type") == "extra_forbidden":
            key = str(loc[-1]) if loc else "?"
            valid = _field_names(model, loc)
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            allowed = f" Valid keys here: {', '.join(sorted(valid))}." if valid else ""
            lines.append(f"  - unknown key '{where}'.{hint}{allowed}")
        elif not loc and e.get("type") == "value_error":  # a rule across several keys: the message says which
            lines.append(f"  - {str(e.get('msg')).removeprefix('Value error, ')}")
        else:
            got = e.get("input")
            got_s = repr(got)
            if len(got_s) > 80:
                got_s = got_s[:77] + "..."
            lines.append(f"  - {where}: {e.get('msg')} (got {got_s}){_value_hint(e)}")
    return "\n".join(lines)


def _value_hint(error: Any) -> str:
    """' Did you mean ...?' for a misspelt choice (a Literal value such as a method name)."""
    if error.get("type") != "literal_error" or not isinstance(error.get("input"), str):
        return ""
    choices = re.findall(r"'([^']*)'", str((error.get("ctx") or {}).get("expected", "")))
    close = difflib.get_close_matches(error["input"], choices, n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def validate(model: type[M], data: Any, source: str | Path = "<config>") -> M:
    """Turn plain data into `model`, raising ConfigError that names the source, the key and a suggestion."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(model, err, str(source))) from None


def suggest(value: str, choices: list[str] | set[str], what: str, source: str = "") -> str:
    """Message for an unknown name (backbone, dataset) with the closest valid one."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    prefix = f"{source}: " if source else ""
    return f"{prefix}unknown {what} '{value}'.{hint} Known: {', '.join(sorted(choices))}."


def load_yaml(path: str | Path) -> Any:
    """A YAML file's data; a missing file, a folder, unreadable or non-UTF-8 bytes, bad YAML and a key given twice are
    ConfigErrors."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory, expected a YAML file")
    if not p.exists():
        raise ConfigError(f"{p}: file not found")
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise ConfigError(f"{p}: cannot read ({err.strerror or err})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{p}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
            "expected a YAML file saved as UTF-8"
        ) from None
    return parse_yaml(text, str(p), empty={})
