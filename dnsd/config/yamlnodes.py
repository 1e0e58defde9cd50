"""YAML -> a tree of located nodes (every value knows its file:line:col and key path); duplicate keys rejected."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import yaml

from dnsd.config.errors import ConfigError, Mark, Problem, Problems


@dataclass(slots=True)
class Node:
    mark: Mark
    path: str


@dataclass(slots=True)
class Scalar(Node):
    value: Any  # str | int | float | bool | None, as YAML 1.1 core schema resolves it


@dataclass(slots=True)
class Seq(Node):
    items: list[Node] = field(default_factory=list)


@dataclass(slots=True)
class Map(Node):
    # key -> (mark of the key, value node); insertion order kept
    entries: dict[str, tuple[Mark, Node]] = field(default_factory=dict)

    def get(self, key: str) -> Node | None:
        entry = self.entries.get(key)
        return entry[1] if entry else None

    def __iter__(self) -> Iterator[tuple[str, Node]]:
        return ((key, node) for key, (_, node) in self.entries.items())

    def key_mark(self, key: str) -> Mark:
        return self.entries[key][0]


def child_path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


def parse_yaml(text: str, filename: str) -> Node | None:
    """Parse one YAML document. Raises ConfigError for syntax errors and duplicate keys (all of them)."""
    try:
        root = yaml.compose(text, Loader=_COMPOSER)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = Mark(filename, mark.line + 1, mark.column + 1) if mark else Mark(filename, 1, 1)
        context = ""
        if err.context and err.context_mark and err.context_mark is not mark:
            context = f"{err.context} (from line {err.context_mark.line + 1}:{err.context_mark.column + 1}): "
        raise ConfigError([Problem(where, "", f"YAML syntax: {context}{err.problem or err}")]) from None
    except yaml.YAMLError as err:
        raise ConfigError([Problem(Mark(filename, 1, 1), "", f"YAML: {err}")]) from None
    if root is None:
        return None
    problems = Problems()
    node = _convert(root, filename, "", problems)
    problems.raise_if_any()
    return node


# libyaml's parser when PyYAML has it (about 5x faster on big configs); its nodes keep the same marks
_COMPOSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_constructor = yaml.SafeLoader(  # used only to resolve scalar values (ints, bools, nulls) per YAML rules
    "")


def _mark(filename: str, node: yaml.Node) -> Mark:
    return Mark(filename, node.start_mark.line + 1, node.start_mark.column + 1)


def _convert(node: yaml.Node, filename: str, path: str, problems: Problems) -> Node:
    mark = _mark(filename, node)
    if isinstance(node, yaml.ScalarNode):
        try:
            value = _constructor.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as err:
            problems.add(mark, path, f"bad value: {err.problem}")
            value = None
        return Scalar(mark, path, value)
    if isinstance(node, yaml.SequenceNode):
        return Seq(mark, path, [_convert(item, filename, child_path(path, index), problems)
                                for index, item in enumerate(node.value)])
    if isinstance(node, yaml.MappingNode):
        result = Map(mark, path)
        for key_node, value_node in node.value:
            key_mark = _mark(filename, key_node)
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                problems.add(key_mark, path, "keys must be plain strings (no merge keys or complex keys)")
                continue
            key = str(key_node.value)
            sub_path = child_path(path, key)
            if key in result.entries:
                first = result.entries[key][0]
                problems.add(key_mark, sub_path,
                             f"duplicate key {key!r} (first defined at line {first.line}); "
                             "YAML would silently keep only the last one")
                continue
            result.entries[key] = (key_mark, _convert(value_node, filename, sub_path, problems))
        return result
    problems.add(mark, path, f"unsupported YAML node {type(node).__name__}")
    return Scalar(mark, path, None)
