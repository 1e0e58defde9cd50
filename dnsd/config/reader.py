"""Typed reads from located YAML nodes; each bad value becomes one Problem and reads as None."""
from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from dnsd.config.errors import Problems
from dnsd.config.yamlnodes import Map, Node, Scalar, Seq

T = TypeVar("T")

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float | None:
    """Seconds from duration text ('90s', '30m', '2h', '500ms', '1d'), or None if it is not one."""
    match = _DURATION.match(text.strip())
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)] if match else None


def kind_of(node: Node) -> str:
    if isinstance(node, Map):
        return "a mapping"
    if isinstance(node, Seq):
        return "a list"
    value = node.value  # type: ignore[attr-defined]
    if value is None:
        return "empty"
    return f"{value!r}"


class Reader:
    """base_dir: where relative file names in the config point (the config file's folder); None leaves
    them relative to the working directory."""

    def __init__(self, problems: Problems, base_dir: str | Path | None = None):
        self.problems = problems
        self.base_dir = os.path.abspath(base_dir) if base_dir is not None else None

    def fail(self, node: Node, message: str) -> None:
        self.problems.add(node.mark, node.path, message)

    # -- structure -------------------------------------------------------------------------

    def mapping(self, node: Node | None, allowed: Iterable[str] = (), required: Iterable[str] = (),
                open_keys: bool = False, what: str = "a mapping") -> Map | None:
        """A mapping with only `allowed` keys (unless open_keys) and all `required` ones."""
        if node is None:
            return None
        if not isinstance(node, Map):
            self.fail(node, f"expected {what}, got {kind_of(node)}")
            return None
        allowed = tuple(allowed)
        if not open_keys:
            for key, _ in node:
                if key not in allowed:
                    self.problems.add(node.key_mark(key), node.entries[key][1].path,
                                      f"unknown key {key!r} (allowed: {', '.join(allowed)})")
        for key in required:
            if node.get(key) is None:
                self.fail(node, f"missing required key {key!r}")
        return node

    def sequence(self, node: Node | None, what: str = "a list") -> list[Node]:
        if node is None:
            return []
        if isinstance(node, Seq):
            return node.items
        self.fail(node, f"expected {what}, got {kind_of(node)}")
        return []

    def one_or_many(self, node: Node | None) -> list[Node]:
        """A scalar or a list of scalars (e.g. `addresses: 10.0.0.1` or `[10.0.0.1, ::1]`)."""
        if node is None:
            return []
        if isinstance(node, Seq):
            return node.items
        return [node]

    # -- scalars ---------------------------------------------------------------------------

    def scalar(self, node: Node | None, convert: Callable[[object], T], expected: str,
               default: T | None = None) -> T | None:
        if node is None:
            return default
        if not isinstance(node, Scalar) or node.value is None:
            self.fail(node, f"expected {expected}, got {kind_of(node)}")
            return None
        try:
            return convert(node.value)
        except (ValueError, TypeError) as err:
            detail = f": {err}" if str(err) and not str(err).startswith("invalid literal") else ""
            self.fail(node, f"expected {expected}, got {node.value!r}{detail}")
            return None

    def string(self, node: Node | None, default: str | None = None) -> str | None:
        def convert(value: object) -> str:
            if isinstance(value, (dict, list, bool)):
                raise ValueError()
            return str(value)
        return self.scalar(node, convert, "a string", default)

    def integer(self, node: Node | None, minimum: int, maximum: int, default: int | None = None,
                expected: str | None = None) -> int | None:
        def convert(value: object) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError()
            if not minimum <= value <= maximum:
                raise ValueError()  # the expected text already names the range
            return value
        return self.scalar(node, convert, expected or f"a whole number from {minimum} to {maximum}", default)

    def ttl(self, node: Node | None, default: int | None = None) -> int | None:
        # RFC 2181 §8: TTLs are 0 .. 2^31-1 seconds
        return self.integer(node, 0, 2**31 - 1, default, "a TTL in seconds (0 to 2147483647)")

    def boolean(self, node: Node | None, default: bool | None = None) -> bool | None:
        def convert(value: object) -> bool:
            if not isinstance(value, bool):
                raise ValueError()
            return value
        return self.scalar(node, convert, "true or false", default)

    def duration(self, node: Node | None, default: float | None = None, minimum: float = 0.0) -> float | None:
        def convert(value: object) -> float:
            if isinstance(value, bool):
                raise ValueError()
            if isinstance(value, (int, float)):
                seconds = float(value)
            else:
                match = _DURATION.match(str(value).strip())
                if not match:
                    raise ValueError()
                seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            if seconds < minimum:
                raise ValueError(f"must be at least {minimum:g}s")
            return seconds
        return self.scalar(node, convert, "a duration like 500ms, 10s, 5m, 1h (or seconds)", default)

    def choice(self, node: Node | None, allowed: tuple[str, ...], default: str | None = None) -> str | None:
        def convert(value: object) -> str:
            if value not in allowed:
                raise ValueError()
            return str(value)
        return self.scalar(node, convert, f"one of {', '.join(allowed)}", default)

    def label(self, node: Node, text: str, what: str) -> bool:
        """A single DNS label as used in generated names: a-z, 0-9 and '-', not at the ends."""
        if _LABEL.match(text):
            return True
        self.fail(node, f"{what} {text!r} is not a valid DNS label "
                        "(lower-case letters, digits and '-', 1-63 characters, no '-' at either end)")
        return False

    def address(self, node: Node) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        def convert(value: object):
            try:
                return ipaddress.ip_address(str(value))
            except ValueError:
                raise ValueError() from None
        return self.scalar(node, convert, "an IPv4 or IPv6 address")

    def network(self, node: Node) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        def convert(value: object):
            try:
                return ipaddress.ip_network(str(value), strict=True)
            except ValueError as err:
                if "host bits set" in str(err):
                    raise ValueError("host bits are set beyond the prefix length") from None
                raise ValueError() from None
        return self.scalar(node, convert, "a network in CIDR form like 10.1.0.0/16")

    def file_name(self, node: Node | None) -> str | None:
        """A path to a file (read at run time, so a config stays checkable on another machine).
        Relative paths are relative to the config file's folder, whatever the working directory."""
        text = self.string(node)
        if text is not None and not text.strip():
            self.fail(node, "expected a file name, got an empty string")
            return None
        if text is None or self.base_dir is None or os.path.isabs(text):
            return text
        return os.path.normpath(os.path.join(self.base_dir, text))
