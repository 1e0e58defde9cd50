"""The forwarding cache: stored upstream replies by (name, type, class, DO, CD), their lifetimes (RFC 2308
for negative answers), TTLs counted down by patching stored bytes, LRU bounds on entries and bytes,
serve-stale (RFC 8767) and flushes by name."""
from __future__ import annotations

import itertools
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from dnsd.forward.message import Cleaned

_U32 = struct.Struct("!I")

STALE_TTL = 30  # the TTL of a stale answer (RFC 8767 section 4 recommends 30 s)
ENTRY_OVERHEAD = 300  # bytes an entry costs besides its message (objects, dict slots), for max_bytes

CacheKey = tuple[bytes, int, int, bool, bool]  # lower-cased qname wire, qtype, qclass, DO, CD


@dataclass(frozen=True, slots=True)
class Lifetimes:
    """How long replies may be kept, from the settings."""

    min_ttl: int = 0
    max_ttl: int = 3600
    max_negative_ttl: int = 1800


@dataclass(slots=True)
class Entry:
    """One stored reply. `records` follows a question of `question_length` bytes (pointers count on
    it); every record's TTL field is at `ttl_offsets` (relative to `records`), holding `ttls`."""

    key: CacheKey
    rcode: int
    records: bytes
    ancount: int
    nscount: int
    ttl_offsets: tuple[int, ...]
    ttls: tuple[int, ...]
    question_length: int
    stored_at: float
    lifetime: int  # seconds it is fresh; 0: never stored, only handed to the queries that waited for it
    negative: bool
    # the records as counted down to one age (whole seconds), kept: every hit within that second
    # reuses them (a popular name is asked many times a second) instead of copying and patching again
    aged: tuple[int, bytes] = (0, b"")

    @property
    def size(self) -> int:
        return len(self.records) + ENTRY_OVERHEAD

    def left(self, now: float) -> float:
        """Seconds it stays fresh (negative: expired that long ago)."""
        return self.stored_at + self.lifetime - now

    def records_at(self, now: float, stale: bool = False) -> bytes:
        """The records with TTLs counted down to now (each at least 0), or all STALE_TTL when stale.
        A few 4-byte patches of a copy: nothing is parsed."""
        age = int(now - self.stored_at)
        if stale:
            return self._patched(lambda ttl: STALE_TTL)
        if age <= 0:
            return self.records
        aged_at, records = self.aged
        if aged_at != age:
            records = self._patched(lambda ttl: max(0, ttl - age))
            self.aged = (age, records)
        return records

    def _patched(self, ttl_of: Callable[[int], int]) -> bytes:
        out = bytearray(self.records)
        pack_into = _U32.pack_into
        for offset, ttl in zip(self.ttl_offsets, self.ttls):
            pack_into(out, offset, ttl_of(ttl))
        return bytes(out)


def make_entry(key: CacheKey, cleaned: Cleaned, lifetimes: Lifetimes, now: float) -> Entry:
    """A cleaned reply -> an entry. Every TTL is clamped to [min_ttl, max_ttl]; the entry lives as
    long as the shortest answer record. A negative answer (NXDOMAIN, NODATA) lives min(SOA TTL, SOA
    MINIMUM) capped by max_negative_ttl (RFC 2308 section 5), which also becomes the SOA's TTL; one
    without a SOA is not stored (RFC 2308 section 5: no SOA, no negative caching). SERVFAIL and
    other errors never reach here (nothing of them is stored)."""
    ttls = [min(max(ttl, lifetimes.min_ttl), lifetimes.max_ttl) for ttl in cleaned.ttls]
    candidates = ttls[:cleaned.ancount]
    negative = cleaned.negative
    if negative:
        if cleaned.soa_index is None:
            candidates = [0]
        else:
            negative_ttl = min(max(cleaned.negative_ttl, lifetimes.min_ttl), lifetimes.max_negative_ttl)
            ttls[cleaned.soa_index] = negative_ttl
            candidates.append(negative_ttl)
    lifetime = min(candidates) if candidates else 0
    start = 12 + cleaned.question_length
    records = bytearray(cleaned.message[start:])
    offsets = tuple(offset - start for offset in cleaned.ttl_offsets)
    for offset, ttl in zip(offsets, ttls):
        _U32.pack_into(records, offset, ttl)
    return Entry(key, cleaned.rcode, bytes(records), cleaned.ancount, cleaned.nscount, offsets, tuple(ttls),
                 cleaned.question_length, now, lifetime, negative)


class Cache:
    """Entries in least-recently-used order, bounded by count and bytes. An expired entry is kept
    (for serve-stale) until stale_for has passed too, or until the bounds push it out."""

    def __init__(self, max_entries: int, max_bytes: int, stale_for: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.stale_for = stale_for
        self.clock = clock
        self.entries: OrderedDict[CacheKey, Entry] = OrderedDict()
        self.by_name: dict[bytes, set[CacheKey]] = {}
        self.bytes = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.entries)

    def fresh(self, key: CacheKey, now: float) -> Entry | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        left = entry.stored_at + entry.lifetime - now  # entry.left(now), inline: every hit passes here
        if left > 0:
            self.entries.move_to_end(key)
            return entry
        if -left >= self.stale_for:
            self._remove(key)
        return None

    def stale(self, key: CacheKey, now: float) -> Entry | None:
        """An expired entry still within stale_for, for when every upstream failed (RFC 8767)."""
        entry = self.entries.get(key)
        if entry is None or entry.left(now) > 0 or -entry.left(now) >= self.stale_for:
            return None
        return entry

    def put(self, entry: Entry) -> None:
        if entry.lifetime <= 0 or entry.size > self.max_bytes:
            return
        key = entry.key
        if key in self.entries:
            self._remove(key)
        self.entries[key] = entry
        self.by_name.setdefault(key[0], set()).add(key)
        self.bytes += entry.size
        while len(self.entries) > self.max_entries or self.bytes > self.max_bytes:
            self._remove(next(iter(self.entries)))
            self.evicted += 1

    def flush(self, name_key: bytes) -> int:
        """Remove every entry for this name (lower-cased wire form), all types; -> how many."""
        keys = self.by_name.get(name_key, set()).copy()
        for key in keys:
            self._remove(key)
        return len(keys)

    def flush_all(self) -> int:
        count = len(self.entries)
        self.entries.clear()
        self.by_name.clear()
        self.bytes = 0
        return count

    def sweep(self, now: float, limit: int = 2000) -> int:
        """Drop entries past expiry and stale_for among the `limit` least recently used (housekeeping,
        bounded so a big cache never holds the loop; lookups and eviction drop the others)."""
        gone = [key for key, entry in itertools.islice(self.entries.items(), limit)
                if -entry.left(now) >= self.stale_for]
        for key in gone:
            self._remove(key)
        return len(gone)

    def _remove(self, key: CacheKey) -> None:
        entry = self.entries.pop(key)
        self.bytes -= entry.size
        names = self.by_name[key[0]]
        names.discard(key)
        if not names:
            del self.by_name[key[0]]
