"""YAML text to plain data, the one way every file and option is read: PyYAML's safe loader, except that a key
given twice in one mapping is an error naming both lines (PyYAML keeps the last one without a word, so two `axes:`
sections would run only the second grid)."""

from __future__ import annotations

from typing import Any

import yaml

from .errors import ConfigError


def parse_yaml(text: str, source: str, empty: Any = None) -> Any:
    """YAML text -> plain data, where a key given twice in one mapping is an error naming both lines (PyYAML keeps
    the last one silently: two `axes:` sections would run only the second grid)."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except _DuplicateKey as err:
        raise ConfigError(f"{source}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from None
    return empty if data is None and empty is not None else data


class _DuplicateKey(Exception):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key that appears twice in one mapping (merge keys `<<` may override)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # an unhashable key: PyYAML's own error follows
                line = key_node.start_mark.line + 1
                if key in first:
                    several = " (several grids: one `axes:` holding a list of grids)" if key == "axes" else ""
                    raise _DuplicateKey(
                        f"line {line}: duplicate key '{key}' (first at line {first[key]}); YAML would keep only the "
                        f"last one: merge them into one{several}"
                    )
                first[key] = line
        return super().construct_mapping(node, deep=deep)
