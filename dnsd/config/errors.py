"""Config problems: each one located (file:line:col and key path), collected, then raised once."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Mark:
    file: str
    line: int  # 1-based
    column: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class Problem:
    mark: Mark
    path: str  # key path like "registries.contoso.replicas.eastus.location"; "" for the document
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.mark}: {where}{self.message}"


class ConfigError(Exception):
    """Every problem found in one config, in file order."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: (p.mark.file, p.mark.line, p.mark.column, p.path))
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.problems)
        lines = [f"{count} problem{'s' if count != 1 else ''} in config:"]
        lines += [f"  {problem}" for problem in self.problems]
        return "\n".join(lines)


class Problems:
    """Collects problems during validation so the user sees all of them at once."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, mark: Mark, path: str, message: str) -> None:
        self.items.append(Problem(mark, path, message))

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)
