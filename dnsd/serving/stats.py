"""Per-query counters and latency, kept as plain dicts and lists (cheap on the query path), plus the
recent share of global answers per replica for the status page. Exported at scrape time."""
from __future__ import annotations

import bisect
import collections
import time

from dnsd import records

# qtypes counted under their own label; everything else is "other" (bounded metric cardinality)
COUNTED_QTYPES = frozenset({records.A, records.AAAA, records.CNAME, records.TXT, records.MX, records.NS,
                            records.SOA, records.ANY, records.CAA, records.SRV, records.HTTPS, records.PTR, 64})
LATENCY_BOUNDS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)
SHARE_WINDOW = 300.0  # seconds of history behind "recent share of global answers"
SHARE_SAMPLE = 10.0


class QueryStats:
    latency_bounds = LATENCY_BOUNDS  # for the listeners that count packet-cache hits (dnsd.protocol.listening)

    def __init__(self) -> None:
        # (view, kind, qtype or 0, rcode, registry, replica) -> count; registry/replica "" unless chosen
        self.counts: dict[tuple[str, str, int, int, str, str], int] = {}
        self.latency_counts = [0] * (len(LATENCY_BOUNDS) + 1)
        self.latency_sum = 0.0
        self.dropped = 0  # queries we did not answer (malformed beyond reply, or responses)
        self.forward_overloaded = 0  # forwarded queries answered SERVFAIL: too many already waiting upstream
        self._history: collections.deque[tuple[float, dict[tuple[str, str], int]]] = collections.deque()
        self.last_key: tuple = ("", "", 0, 0, "", "")  # labels of the last counted query (packet cache)
        # (client region, what placed it: networks, database, default) -> answers performance routing
        # chose by it; last_located: the last query's, None when it placed nobody (packet cache)
        self.located: dict[tuple[str, str], int] = {}
        self.last_located: tuple[str, str] | None = None

    def count(self, view: str, kind: str, qtype: int, rcode: int, registry: str = "", replica: str = "") -> None:
        key = (view, kind, qtype if qtype in COUNTED_QTYPES else 0, rcode, registry, replica)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.last_key = key

    def count_cached(self, entry: tuple[bytes, tuple, tuple[str, str] | None]) -> None:
        """A reply from a packet cache: its entry's labels and client region counted again."""
        labels, located = entry[1], entry[2]
        self.counts[labels] = self.counts.get(labels, 0) + 1
        if located is not None:
            self.locate(located)

    def locate(self, located: tuple[str, str]) -> None:
        self.located[located] = self.located.get(located, 0) + 1
        self.last_located = located

    def observe_latency(self, seconds: float) -> None:
        self.latency_counts[bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.latency_sum += seconds

    def chosen_totals(self, counts: dict | None = None) -> dict[tuple[str, str], int]:
        """Answers per (registry, replica) the global name chose, from `counts` (every worker's under
        --workers) or this process's own."""
        totals: dict[tuple[str, str], int] = {}
        for (_, _, _, _, registry, replica), count in list((self.counts if counts is None else counts).items()):
            if registry:
                totals[(registry, replica)] = totals.get((registry, replica), 0) + count
        return totals

    def sample(self, now: float | None = None, counts: dict | None = None) -> None:
        """Remember the totals now; called every SHARE_SAMPLE seconds by the service."""
        now = time.monotonic() if now is None else now
        self._history.append((now, self.chosen_totals(counts)))
        while self._history and now - self._history[0][0] > SHARE_WINDOW:
            self._history.popleft()

    def recent_shares(self, counts: dict | None = None) -> dict[tuple[str, str], float]:
        """Per registry: each replica's fraction of the global answers over the recent window (of
        `counts` when given: sample() must have been given the same kind)."""
        now_totals = self.chosen_totals(counts)
        base = self._history[0][1] if self._history else {}
        delta = {key: count - base.get(key, 0) for key, count in now_totals.items()}
        by_registry: dict[str, int] = {}
        for (registry, _), count in delta.items():
            by_registry[registry] = by_registry.get(registry, 0) + count
        return {key: count / by_registry[key[0]] for key, count in delta.items() if by_registry[key[0]]}


def qtype_label(qtype: int) -> str:
    return records.type_name(qtype) if qtype else "other"
