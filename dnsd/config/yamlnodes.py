"""YAML -> a tree of located nodes (every value knows its file:line:col and key path); duplicate keys rejected."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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


@dataclass(frozen=True, slots=True)
class Limits:
    """What reading one config may cost, checked while it is read (before anything is built), so a
    hostile or broken file is refused quickly with bounded memory: file size, nodes, what aliases add
    (an alias is expanded wherever it is used, so `[*a, *a, ...]` nested a few times multiplies), and
    nesting depth."""

    max_bytes: int = 16 * 1024 * 1024
    max_nodes: int = 1_000_000  # after alias expansion: every scalar, list and mapping built
    alias_factor: int = 4  # aliases may add at most this many times the nodes written before them...
    alias_floor: int = 10_000  # ...or this many, whichever is more
    max_depth: int = 64  # nesting of lists and mappings, aliases expanded


LIMITS = Limits()


def read_text(path: str | Path, limits: Limits = LIMITS) -> str:
    """A config file's text. Raises ConfigError when it is larger than limits.max_bytes or not UTF-8,
    OSError when it cannot be read."""
    chunks, size = [], 0
    with open(path, "rb") as file:
        while size <= limits.max_bytes:  # never more than the bound, whatever the file claims to be
            chunk = file.read(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    data = b"".join(chunks)
    if size > limits.max_bytes:
        raise _too_large(str(path), limits)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise ConfigError([Problem(Mark(str(path), line, column), "",
                                   f"not UTF-8: byte 0x{data[err.start]:02x} cannot start or continue a character")]
                          ) from None


def _too_large(filename: str, limits: Limits) -> ConfigError:
    size = limits.max_bytes
    readable = f"{size // (1 << 20)} MiB" if size % (1 << 20) == 0 else f"{size:,} bytes"
    return ConfigError([Problem(Mark(filename, 1, 1), "", f"file too large: more than {size:,} bytes "
                                f"(the limit for a config file is {readable})")])


def parse_yaml(text: str, filename: str, limits: Limits = LIMITS) -> Node | None:
    """Parse one YAML document. Raises ConfigError for syntax errors, duplicate keys (all of them) and
    the first bound of `limits` crossed."""
    if len(text) > limits.max_bytes or len(text.encode("utf-8")) > limits.max_bytes:
        raise _too_large(filename, limits)
    try:
        root = _Composer(filename, limits).compose(text)
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
    # a constructor per parse: it remembers every node it constructed, so a shared one would keep every
    # config's scalars alive forever (and would be shared between threads)
    node = _convert(root, filename, "", problems, yaml.constructor.SafeConstructor())
    problems.raise_if_any()
    return node


def plain(node: Node | None) -> Any:
    """A located tree as plain data: dicts, lists and scalars, as yaml.safe_load gives them."""
    if isinstance(node, Map):
        return {key: plain(value) for key, value in node}
    if isinstance(node, Seq):
        return [plain(item) for item in node.items]
    return None if node is None else node.value  # type: ignore[attr-defined]


def read_document(path: str | Path, limits: Limits = LIMITS) -> Any:
    """A config file as plain data, read under the same limits and rules as load_config (duplicate keys
    refused), unvalidated: for tools that write a variant of a config (bench, tests)."""
    path = Path(path)
    return plain(parse_yaml(read_text(path, limits), str(path), limits))


# libyaml's parser when PyYAML has it (about 5x faster on big configs); its events keep the same marks
_PARSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_resolver = yaml.resolver.Resolver()  # implicit tags of plain scalars (ints, bools, nulls) per YAML 1.1 rules


class _Frame:
    """A list or mapping being composed: its node, what it holds so far, and what it expands to."""

    __slots__ = ("node", "mapping", "anchor", "size", "height", "key")

    def __init__(self, node: yaml.Node, anchor: str | None):
        self.node, self.anchor = node, anchor
        self.mapping = isinstance(node, yaml.MappingNode)
        self.size, self.height = 1, 1  # nodes it expands to (itself included), its levels (a scalar has 0)
        self.key: object = None  # mappings: the last key composed (for the path in a problem)


class _Composer:
    """libyaml events -> PyYAML nodes (an alias shares its anchor's node, as yaml.compose does), counting
    while composing: nodes written, nodes aliases add (an anchor's expanded size, once per use), the
    total and the depth, each against `limits`; stops at the first bound crossed."""

    def __init__(self, filename: str, limits: Limits):
        self.filename, self.limits = filename, limits
        # name -> (node, nodes it expands to, levels); None while it is still open
        self.anchors: dict[str, tuple[yaml.Node, int, int] | None] = {}
        self.written = 0  # node events in the file (aliases count one each)
        self.added = 0  # nodes the aliases add beyond the one written
        self.stack: list[_Frame] = []

    def compose(self, text: str) -> yaml.Node | None:
        loader = _PARSER(text)
        try:
            return self._compose(loader.get_event)
        finally:
            loader.dispose()

    def _compose(self, next_event) -> yaml.Node | None:
        # one loop with the common case (a plain scalar) inline: this runs once per node of big configs
        root = first_document = None
        stack = self.stack
        max_nodes, max_depth = self.limits.max_nodes, self.limits.max_depth
        resolve = _resolver.resolve
        scalar_node = yaml.ScalarNode
        tags: dict[tuple[str, tuple[bool, bool]], str] = {}
        while True:
            event = next_event()
            kind = type(event)
            if kind is yaml.ScalarEvent and event.anchor is None:
                self.written += 1
                if self.written + self.added > max_nodes:
                    self.refuse(event, self.too_many())
                if len(stack) > max_depth:
                    self.refuse(event, self.too_deep())
                tag = event.tag
                if tag is None or tag == "!":
                    # the implicit tag depends only on the text: configs repeat keys and values a lot
                    known_tag = tags.get((event.value, event.implicit))
                    if known_tag is None:
                        known_tag = resolve(scalar_node, event.value, event.implicit)
                        if len(tags) < 4096:
                            tags[(event.value, event.implicit)] = known_tag
                    tag = known_tag
                node = scalar_node(tag, event.value, event.start_mark, None, style=event.style)  # end marks unused
                if stack:
                    frame = stack[-1]
                    frame.size += 1
                    if frame.key is None and frame.mapping:
                        frame.key = node
                    elif frame.mapping:
                        frame.node.value.append((frame.key, node))
                        frame.key = None
                    else:
                        frame.node.value.append(node)
                else:
                    root = node
            elif kind is yaml.SequenceEndEvent or kind is yaml.MappingEndEvent:
                frame = stack.pop()
                frame.node.end_mark = event.end_mark
                if frame.anchor is not None:
                    self.anchors[frame.anchor] = (frame.node, frame.size, frame.height)
                self.add_child(frame.node, frame.size, frame.height)
                if not stack:
                    root = frame.node
            elif kind in (yaml.ScalarEvent, yaml.AliasEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent):
                node = self.node_event(event)
                if node is not None and not stack:
                    root = node
            elif kind is yaml.DocumentStartEvent:
                if first_document is not None:
                    raise yaml.composer.ComposerError("expected a single document in the stream", first_document,
                                                      "but found another document", event.start_mark)
                first_document = event.start_mark
            elif kind is yaml.StreamEndEvent or event is None:
                return root

    def too_many(self) -> str:
        return f"too many nodes: more than {self.limits.max_nodes:,} (values, lists and mappings, aliases expanded)"

    def too_deep(self) -> str:
        return f"nested more than {self.limits.max_depth} levels deep (aliases expanded)"

    def node_event(self, event: yaml.Event) -> yaml.Node | None:
        """Any node event but the plain scalar: aliases, anchored scalars, starts of lists and mappings."""
        self.written += 1
        if self.written + self.added > self.limits.max_nodes:
            self.refuse(event, self.too_many())
        if isinstance(event, yaml.AliasEvent):
            known = self.anchors.get(event.anchor, False)
            if known is False:
                raise yaml.composer.ComposerError(None, None, f"found undefined alias {event.anchor!r}",
                                                  event.start_mark)
            if known is None:
                self.refuse(event, f"alias *{event.anchor} is used inside the node it names (a loop)")
            node, size, height = known
            self.added += size - 1
            allowed = max(self.limits.alias_floor, self.limits.alias_factor * self.written)
            if self.added > allowed:
                self.refuse(event, f"alias *{event.anchor} expands to {size:,} nodes: aliases would add "
                                   f"{self.added:,} nodes by here, more than the {allowed:,} allowed (the larger of "
                                   f"{self.limits.alias_floor:,} and {self.limits.alias_factor} times the "
                                   f"{self.written:,} nodes written so far)")
            if self.written + self.added > self.limits.max_nodes:
                self.refuse(event, f"too many nodes: alias *{event.anchor} brings the total to "
                                   f"{self.written + self.added:,}, more than {self.limits.max_nodes:,} (values, "
                                   "lists and mappings, aliases expanded)")
            self.check_depth(event, height)
            self.add_child(node, size, height)
            return node
        anchor = event.anchor
        if anchor is not None and anchor in self.anchors:
            first = self.anchors[anchor]
            raise yaml.composer.ComposerError(f"found duplicate anchor {anchor!r}; first occurrence",
                                              first[0].start_mark if first else None,
                                              "second occurrence", event.start_mark)
        if isinstance(event, yaml.ScalarEvent):
            tag = event.tag
            if tag is None or tag == "!":
                tag = _resolver.resolve(yaml.ScalarNode, event.value, event.implicit)
            node = yaml.ScalarNode(tag, event.value, event.start_mark, None, style=event.style)
            if anchor is not None:
                self.anchors[anchor] = (node, 1, 0)
            self.check_depth(event, 0)
            self.add_child(node, 1, 0)
            return node
        kind = yaml.SequenceNode if isinstance(event, yaml.SequenceStartEvent) else yaml.MappingNode
        tag = event.tag
        if tag is None or tag == "!":
            tag = _resolver.resolve(kind, None, event.implicit)
        node = kind(tag, [], event.start_mark, None, flow_style=event.flow_style)
        if anchor is not None:
            self.anchors[anchor] = None  # open: an alias to it from inside would be a loop
        self.check_depth(event, 1)
        self.stack.append(_Frame(node, anchor))
        return None

    def add_child(self, node: yaml.Node, size: int, height: int) -> None:
        """Put the node into the list or mapping being composed, adding up what that one expands to."""
        if not self.stack:
            return
        frame = self.stack[-1]
        frame.size += size
        if height >= frame.height:
            frame.height = height + 1
        if frame.mapping:
            if frame.key is None:
                frame.key = node
                return
            frame.node.value.append((frame.key, node))
            frame.key = None
        else:
            frame.node.value.append(node)

    def check_depth(self, event: yaml.Event, height: int) -> None:
        if len(self.stack) + height > self.limits.max_depth:
            self.refuse(event, self.too_deep())

    def refuse(self, event: yaml.Event, message: str) -> None:
        mark = event.start_mark
        raise ConfigError([Problem(Mark(self.filename, mark.line + 1, mark.column + 1), self.path(), message)])

    def path(self) -> str:
        """The key path of the node being composed, from the open lists and mappings."""
        path = ""
        for frame in self.stack:
            if isinstance(frame.node, yaml.MappingNode):
                if frame.key is None:
                    break  # composing a key
                key = frame.key.value if isinstance(frame.key, yaml.ScalarNode) else "?"
                path = child_path(path, str(key))
            else:
                path = child_path(path, len(frame.node.value))
        return path


def _mark(filename: str, node: yaml.Node) -> Mark:
    return Mark(filename, node.start_mark.line + 1, node.start_mark.column + 1)


def _convert(node: yaml.Node, filename: str, path: str, problems: Problems,
             constructor: yaml.constructor.SafeConstructor) -> Node:
    mark = _mark(filename, node)
    if isinstance(node, yaml.ScalarNode):
        try:
            value = constructor.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as err:
            problems.add(mark, path, f"bad value: {err.problem}")
            value = None
        return Scalar(mark, path, value)
    if isinstance(node, yaml.SequenceNode):
        return Seq(mark, path, [_convert(item, filename, child_path(path, index), problems, constructor)
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
            result.entries[key] = (key_mark, _convert(value_node, filename, sub_path, problems, constructor))
        return result
    problems.add(mark, path, f"unsupported YAML node {type(node).__name__}")
    return Scalar(mark, path, None)
