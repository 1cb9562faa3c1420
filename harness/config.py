"""YAML files users write (device profiles, catalogs), read with the line of every value.

`load_yaml()` returns a `Node` tree; the typed getters raise `ConfigError` naming file, line and
field, so a schema is a few obvious lines of code in the module that owns it.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from harness.errors import ConfigError

T = TypeVar("T")
_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class Node:
    """A YAML value with where it stands: `path` is the file, `field` the dotted key path."""

    value: Any  # str | int | float | bool | None | list[Node] | dict[str, Node]
    path: builtins.str
    line: builtins.int
    field: builtins.str

    def error(self, message: builtins.str) -> ConfigError:
        return ConfigError(self.path, self.line, self.field or None, message)

    # --- mappings -------------------------------------------------------------------------
    def mapping(self, allowed: set[builtins.str] | None = None) -> dict[builtins.str, Node]:
        """This node as a mapping; with `allowed`, any other key is an error naming it."""
        if not isinstance(self.value, dict):
            raise self.error(f"expected a mapping, got {_type_name(self.value)}")
        if allowed is not None:
            for key, child in self.value.items():
                if key not in allowed:
                    raise child.error(f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return dict(self.value)

    def get(self, key: builtins.str) -> Node | None:
        return self.mapping().get(key)

    def require(self, key: builtins.str) -> Node:
        child = self.mapping().get(key)
        if child is None:
            raise self.error(f"missing required key '{key}'")
        return child

    def str(self, key: builtins.str, default: Any = _MISSING) -> builtins.str:
        return self._typed(key, str, "a string", default)

    def int(self, key: builtins.str, default: Any = _MISSING) -> builtins.int:
        return self._typed(key, int, "an integer", default)

    def number(self, key: builtins.str, default: Any = _MISSING) -> float:
        node = self._child(key, default)
        if node is None:
            return default
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise node.error(f"expected a number, got {_type_name(node.value)}")
        return float(node.value)

    def bool(self, key: builtins.str, default: Any = _MISSING) -> builtins.bool:
        return self._typed(key, bool, "true or false", default)

    def list(self, key: builtins.str, default: Any = _MISSING) -> builtins.list[Node]:
        node = self._child(key, default)
        if node is None:
            return default
        return node.items()

    def str_list(self, key: builtins.str, default: Any = _MISSING) -> builtins.list[builtins.str]:
        node = self._child(key, default)
        if node is None:
            return default
        if isinstance(node.value, str):
            return [node.value]
        return [item.as_str() for item in node.items()]

    # --- scalars and sequences ------------------------------------------------------------
    def items(self) -> builtins.list[Node]:
        if not isinstance(self.value, list):
            raise self.error(f"expected a list, got {_type_name(self.value)}")
        return list(self.value)

    def as_str(self) -> builtins.str:
        if not isinstance(self.value, str):
            raise self.error(f"expected a string, got {_type_name(self.value)}")
        return self.value

    def as_int(self) -> builtins.int:
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            raise self.error(f"expected an integer, got {_type_name(self.value)}")
        return self.value

    def plain(self) -> Any:
        """The value with line information stripped (for free-form sections)."""
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value

    def __iter__(self) -> Iterator[Node]:
        return iter(self.items())

    # --- internals ------------------------------------------------------------------------
    def _child(self, key: builtins.str, default: Any) -> Node | None:
        child = self.mapping().get(key)
        if child is None or child.value is None:
            if default is _MISSING:
                if child is not None:
                    raise child.error("a value is required")
                raise self.error(f"missing required key '{key}'")
            return None
        return child

    def _typed(self, key: builtins.str, kind: type[T], expected: builtins.str, default: Any) -> T:
        node = self._child(key, default)
        if node is None:
            return default
        value = node.value
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise node.error(f"expected {expected}, got {_type_name(value)}")
        return value


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    return f"the string {value!r}" if len(str(value)) < 40 else "a string"


def _convert(node: yaml.Node, path: str, field: str, key_line: int | None = None) -> Node:
    """Convert a composed node; a mapping value is placed on its key's line, where users look."""
    line = key_line or node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        children: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node)) if not isinstance(key_node, yaml.ScalarNode) \
                else key_node.value
            key = str(key)
            child_field = f"{field}.{key}" if field else key
            if key in children:
                raise ConfigError(path, key_node.start_mark.line + 1, child_field, "duplicate key")
            children[key] = _convert(value_node, path, child_field, key_node.start_mark.line + 1)
        return Node(children, path, line, field)
    if isinstance(node, yaml.SequenceNode):
        items = [_convert(item, path, f"{field}[{i}]") for i, item in enumerate(node.value)]
        return Node(items, path, line, field)
    value = yaml.safe_load(yaml.serialize(node)) if node.tag != "tag:yaml.org,2002:str" else node.value
    return Node(value, path, line, field)


def load_yaml(path: Path) -> Node:
    """Parse a YAML file into a Node tree; a parse error names file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, None, None, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, None, None, "not UTF-8 text") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str) -> Node:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(source, line, None, f"YAML error: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, None, None, f"YAML error: {exc}") from None
    if root is None:
        return Node({}, source, 1, "")
    try:
        return _convert(root, source, "")
    except yaml.YAMLError as exc:
        raise ConfigError(source, root.start_mark.line + 1, None, f"YAML error: {exc}") from None
