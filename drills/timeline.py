"""Timelines of a scenario and the verdict on its measured times against the config's budget (pure)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Mark:
    at: float  # wall clock (time.time())
    what: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Measurement:
    """A measured span against its budget; measured None means the end was never seen."""
    name: str
    measured: float | None
    budget: float
    explain: str = ""  # how the budget is made up
    at_least: float | None = None  # lower bound (e.g. fail-open must not happen before the TTL)

    @property
    def ok(self) -> bool:
        if self.measured is None:
            return False
        if self.at_least is not None and self.measured < self.at_least:
            return False
        return self.measured <= self.budget

    def render(self) -> str:
        measured = "never" if self.measured is None else f"{self.measured:6.2f}s"
        verdict = "ok" if self.ok else "OVER BUDGET" if self.measured is not None and self.measured > self.budget \
            else "TOO EARLY" if self.measured is not None else "NOT SEEN"
        floor = f" (not before {self.at_least:.1f}s)" if self.at_least is not None else ""
        explain = f"  [{self.explain}]" if self.explain else ""
        return f"  {self.name:<34} {measured:>8}  budget {self.budget:6.2f}s{floor}  {verdict}{explain}"


@dataclass(slots=True)
class Timeline:
    scenario: str
    origin: float
    marks: list[Mark] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    name: str = ""  # short key (storage-failure, blip, ...)

    def mark(self, at: float | None, what: str, detail: str = "") -> float | None:
        """Record a point in time (None: not seen, recorded as such); returns `at`."""
        if at is None:
            self.notes.append(f"not seen: {what}")
        else:
            self.marks.append(Mark(at, what, detail))
        return at

    def since(self, at: float | None, start: float | None = None) -> float | None:
        if at is None:
            return None
        return at - (self.origin if start is None else start)

    def measure(self, name: str, start: float | None, end: float | None, budget: float, explain: str = "",
                at_least: float | None = None) -> Measurement:
        measured = None if start is None or end is None else end - start
        item = Measurement(name, measured, budget, explain, at_least)
        self.measurements.append(item)
        return item

    def problem(self, text: str) -> None:
        self.problems.append(text)

    @property
    def passed(self) -> bool:
        return not self.problems and all(m.ok for m in self.measurements)

    def render(self) -> str:
        lines = [f"== {self.scenario} " + "=" * max(3, 72 - len(self.scenario))]
        for mark in sorted(self.marks, key=lambda m: m.at):
            detail = f"  ({mark.detail})" if mark.detail else ""
            lines.append(f"  +{mark.at - self.origin:7.2f}s  {mark.what}{detail}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        if self.measurements:
            lines.append("  measured                                 time  vs budget")
            lines.extend(m.render() for m in self.measurements)
        for problem in self.problems:
            lines.append(f"  FAIL: {problem}")
        lines.append(f"  result: {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)


def summary(timelines: list[Timeline]) -> str:
    width = max((len(t.name or t.scenario) for t in timelines), default=10)
    lines = ["== summary " + "=" * 62]
    for t in timelines:
        spans = ", ".join(f"{m.name} {m.measured:.2f}s/{m.budget:.1f}s" if m.measured is not None
                          else f"{m.name} never/{m.budget:.1f}s" for m in t.measurements)
        lines.append(f"  {'PASS' if t.passed else 'FAIL'}  {t.name or t.scenario:<{width}}  {spans or 'no change (as required)'}")
    return "\n".join(lines)
