"""Query counters across `dnsd serve --workers N`: each worker writes its totals (query counts by labels,
latency histogram, dropped, located, forwarding, TCP admission and rate-limit counters) to its own file
in the workers' state dir once a second, off the query path; worker 0 adds the others' files to its own
counters when /metrics or the status page is read. A restarted worker starts from its predecessor's
last file (the base), so no total goes backwards; a killed worker loses at most its last second."""
from __future__ import annotations

import dataclasses
import marshal
import os
import time
from dataclasses import dataclass, field

from dnsd.common.files import write_bytes_atomically
from dnsd.forward.forwarder import ForwardStats
from dnsd.protocol.rrl import ResponseRateLimiter
from dnsd.protocol.tcp import TcpStats
from dnsd.serving.stats import LATENCY_BOUNDS, QueryStats

FORWARD_FIELDS = tuple(f.name for f in dataclasses.fields(ForwardStats))
TCP_COUNTERS = ("accepted", "refused_per_source", "refused_full", "evicted", "closed_under_load", "accept_paused")
FILE_FORMAT = 1


@dataclass(slots=True)
class Totals:
    """Counters of one process, or added up over several. Never changed once built."""

    counts: dict[tuple[str, str, int, int, str, str], int] = field(default_factory=dict)  # as QueryStats.counts
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    latency_sum: float = 0.0
    dropped: int = 0
    forward_overloaded: int = 0
    located: dict[tuple[str, str], int] = field(default_factory=dict)
    forward: dict[str, int] = field(default_factory=dict)  # ForwardStats fields; empty while forwarding is off
    tcp: dict[str, int] = field(default_factory=dict)  # TCP_COUNTERS
    rrl: dict[str, list[int]] = field(default_factory=dict)  # dropped, slipped (by class), [limited_prefixes]

    @property
    def answered(self) -> int:
        return sum(self.counts.values())

    def __add__(self, other: Totals) -> Totals:
        return Totals(counts=_add_keyed(self.counts, other.counts),
                      latency_counts=_add_lists(self.latency_counts, other.latency_counts),
                      latency_sum=self.latency_sum + other.latency_sum,
                      dropped=self.dropped + other.dropped,
                      forward_overloaded=self.forward_overloaded + other.forward_overloaded,
                      located=_add_keyed(self.located, other.located),
                      forward=_add_keyed(self.forward, other.forward), tcp=_add_keyed(self.tcp, other.tcp),
                      rrl={name: _add_lists(self.rrl.get(name, []), other.rrl.get(name, []))
                           for name in {*self.rrl, *other.rrl}})

    def to_bytes(self, **header) -> bytes:
        """The file form: marshal (dicts keyed by tuples as they are; ~1 ms for 10,000 label sets where
        JSON takes 10-40). Every worker runs the supervisor's Python, so the format always matches."""
        return marshal.dumps({**header, "format": FILE_FORMAT,
                              "totals": {name: getattr(self, name) for name in TOTALS_FIELDS}})

    @classmethod
    def from_bytes(cls, data: bytes) -> tuple[dict, Totals]:
        """(header, totals) of a file written by to_bytes; ValueError when it is not one."""
        try:
            doc = marshal.loads(data)
            if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT:
                raise ValueError("not a counters file of this version")
            totals = doc.pop("totals")
            return doc, cls(**{name: totals[name] for name in TOTALS_FIELDS})
        except (EOFError, TypeError, KeyError) as err:
            raise ValueError(f"unreadable counters file: {err}") from err


TOTALS_FIELDS = tuple(f.name for f in dataclasses.fields(Totals))


def live_totals(stats: QueryStats, forward: ForwardStats | None, tcp: TcpStats | None,
                rrl: ResponseRateLimiter | None) -> Totals:
    """A copy of this process's counters now (at scrape or publish time, never per query)."""
    return Totals(counts=dict(stats.counts), latency_counts=list(stats.latency_counts), latency_sum=stats.latency_sum,
                  dropped=stats.dropped, forward_overloaded=stats.forward_overloaded, located=dict(stats.located),
                  forward={name: getattr(forward, name) for name in FORWARD_FIELDS} if forward is not None else {},
                  tcp={name: getattr(tcp, name) for name in TCP_COUNTERS} if tcp is not None else {},
                  rrl={"dropped": list(rrl.dropped), "slipped": list(rrl.slipped),
                       "limited_prefixes": [rrl.limited_prefixes]} if rrl is not None else {})


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """One worker's counters as its file (or, for worker 0, its memory) says."""

    index: int
    pid: int
    totals: Totals
    age_seconds: float  # since the worker wrote them (0 for worker 0's own)


class WorkerCounters:
    """One worker's side of the shared counters: its base (a dead predecessor's last totals), the file
    it publishes, and (worker 0) the other workers' files. Files carry the supervisor's PID: a file
    left by another run of the supervisor is neither a base nor added up."""

    def __init__(self, state_dir: str, index: int, supervisor: int | None = None) -> None:
        self.state_dir = state_dir
        self.index = index
        self.supervisor = os.getppid() if supervisor is None else supervisor
        self.path = counters_path(state_dir, index)
        predecessor = self._read(self.path)
        self.base = predecessor.totals if predecessor is not None else None
        self._published: Totals | None = None  # the live counters last written
        self.failing = False  # the last write failed (logged once per streak)

    def own(self, live: Totals) -> Totals:
        return live if self.base is None else self.base + live

    def publish(self, live: Totals) -> bool:
        """Write base + live to this worker's file when they changed since the last write. No fsync:
        the file must outlive this process (its successor's base), not the machine."""
        if live == self._published:
            return False
        data = self.own(live).to_bytes(supervisor=self.supervisor, worker=self.index, pid=os.getpid(),
                                       written_at=time.time())
        write_bytes_atomically(self.path, data, durable=False)
        self._published = live
        return True

    def reports(self, live: Totals) -> list[WorkerReport]:
        """Every worker's totals: this one's from memory, the others' from their files, by index."""
        found = [WorkerReport(self.index, os.getpid(), self.own(live), 0.0)]
        try:
            names = os.listdir(self.state_dir)
        except OSError:
            names = []
        for name in names:
            index = counters_index(name)
            if index is None or index == self.index:
                continue
            report = self._read(os.path.join(self.state_dir, name))
            if report is not None:
                found.append(report)
        return sorted(found, key=lambda report: report.index)

    def _read(self, path: str) -> WorkerReport | None:
        try:
            with open(path, "rb") as handle:
                header, totals = Totals.from_bytes(handle.read())
            if header.get("supervisor") != self.supervisor:
                return None  # another run's
            return WorkerReport(int(header["worker"]), int(header["pid"]), totals,
                                max(0.0, time.time() - header["written_at"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # not there yet, or not ours: counted once a good file is written


def combined(reports: list[WorkerReport]) -> Totals:
    total = Totals()
    for report in reports:
        total = total + report.totals
    return total


COUNTERS_PREFIX, COUNTERS_SUFFIX = "counters-", ".marshal"


def counters_path(state_dir: str, index: int) -> str:
    return os.path.join(state_dir, f"{COUNTERS_PREFIX}{index}{COUNTERS_SUFFIX}")


def counters_index(name: str) -> int | None:
    """The worker index in a counters file's name; None for any other file (temporary ones included)."""
    if not (name.startswith(COUNTERS_PREFIX) and name.endswith(COUNTERS_SUFFIX)):
        return None
    digits = name[len(COUNTERS_PREFIX):-len(COUNTERS_SUFFIX)]
    return int(digits) if digits.isdigit() else None


def _add_keyed(a: dict, b: dict) -> dict:
    total = dict(a)
    for key, count in b.items():
        total[key] = total.get(key, 0) + count
    return total


def _add_lists(a: list, b: list) -> list:
    longer, shorter = (a, b) if len(a) >= len(b) else (b, a)
    return [value + (shorter[i] if i < len(shorter) else 0) for i, value in enumerate(longer)]
