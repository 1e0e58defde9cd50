"""dnsd.forward.cache: how long each kind of answer lives (RFC 2308 for negative ones), TTLs counted down
in the stored bytes (read back with dnspython), LRU bounds on entries and bytes, serve-stale windows
and flushes. The clock is a number the test moves."""
from __future__ import annotations

import dns.rcode
import pytest

from dnsd.forward.cache import ENTRY_OVERHEAD, STALE_TTL, Cache, Entry, Lifetimes, make_entry
from dnsd.forward.message import client_reply, name_to_wire
from tests.forwardkit import cleaned, decode, query

SOA_60 = "example.com. 300 IN SOA ns.example.com. host.example.com. 1 2 3 4 60"
SOA_TTL_20 = "example.com. 20 IN SOA ns.example.com. host.example.com. 1 2 3 4 600"
DEFAULTS = Lifetimes()

LIFETIME_CASES = [
    # (answer records, authority, rcode, qtype, lifetimes, lifetime, negative)
    (["www.example.com. 300 IN A 192.0.2.1"], [], 0, "A", DEFAULTS, 300, False),
    (["www.example.com. 300 IN A 192.0.2.1", "www.example.com. 300 IN AAAA ::1"], [], 0, "ANY", DEFAULTS, 300, False),
    (["www.example.com. 600 IN CNAME a.example.net.", "a.example.net. 45 IN A 192.0.2.1"], [], 0, "A", DEFAULTS,
     45, False),  # the shortest record of the chain
    (["www.example.com. 86400 IN A 192.0.2.1"], [], 0, "A", DEFAULTS, 3600, False),  # max_ttl
    (["www.example.com. 5 IN A 192.0.2.1"], [], 0, "A", Lifetimes(min_ttl=30), 30, False),  # min_ttl
    (["www.example.com. 0 IN A 192.0.2.1"], [], 0, "A", DEFAULTS, 0, False),  # TTL 0: not stored
    ([], [SOA_60], dns.rcode.NXDOMAIN, "A", DEFAULTS, 60, True),  # SOA MINIMUM < SOA TTL
    ([], [SOA_TTL_20], dns.rcode.NXDOMAIN, "A", DEFAULTS, 20, True),  # SOA TTL < SOA MINIMUM
    ([], [SOA_60], 0, "A", DEFAULTS, 60, True),  # NODATA
    ([], [SOA_60], 0, "A", Lifetimes(max_negative_ttl=10), 10, True),
    ([], [], dns.rcode.NXDOMAIN, "A", DEFAULTS, 0, True),  # no SOA: not cached
    ([], ["example.com. 300 IN NS ns.example.com."], 0, "A", DEFAULTS, 0, True),  # a referral, no SOA
    (["www.example.com. 30 IN CNAME gone.example.net."], [SOA_60], dns.rcode.NXDOMAIN, "A", DEFAULTS, 30, True),
]


@pytest.mark.parametrize("records, authority, rcode, qtype, lifetimes, lifetime, negative", LIFETIME_CASES)
def test_lifetime(records, authority, rcode, qtype, lifetimes, lifetime, negative):
    entry = make_entry(_key(), cleaned(*records, authority=tuple(authority), rcode=rcode, rdtype=qtype),
                       lifetimes, 0.0)
    assert (entry.lifetime, entry.negative) == (lifetime, negative)


def test_the_soa_of_a_negative_answer_carries_the_negative_ttl():
    entry = make_entry(_key(), cleaned(authority=(SOA_60,), rcode=dns.rcode.NXDOMAIN), DEFAULTS, 0.0)
    assert [rrset.ttl for rrset in _decoded(entry, 0.0).authority] == [60]


# (seconds after storing, TTLs the client sees) for records stored with TTLs 300 and 100 (NS in authority)
COUNTDOWN_CASES = [(0, [300, 100]), (0.9, [300, 100]), (1, [299, 99]), (99.5, [201, 1]), (150, [150, 0]),
                   (299, [1, 0])]


@pytest.mark.parametrize("age, ttls", COUNTDOWN_CASES)
def test_ttls_count_down(age, ttls):
    entry = make_entry(_key(), cleaned("www.example.com. 300 IN A 192.0.2.1",
                                       authority=("example.com. 100 IN NS ns.example.com.",)), DEFAULTS, 1000.0)
    msg = _decoded(entry, 1000.0 + age)
    assert [rrset.ttl for rrset in msg.answer + msg.authority] == ttls


def test_stale_records_say_30_seconds():
    entry = make_entry(_key(), cleaned("www.example.com. 300 IN A 192.0.2.1"), DEFAULTS, 0.0)
    assert _decoded(entry, 400.0, stale=True).answer[0].ttl == STALE_TTL


def test_a_hit_without_age_hands_out_the_stored_bytes_themselves():
    entry = make_entry(_key(), cleaned("www.example.com. 300 IN A 192.0.2.1"), DEFAULTS, 5.0)
    assert entry.records_at(5.5) is entry.records


# (seconds after storing, stale?, TTLs the client sees, the same bytes object as the step before?)
AGED_STEPS = [(2.1, False, [298], False), (2.9, False, [298], True),   # one second: one patched copy
              (3.0, False, [297], False), (400.0, True, [STALE_TTL], False),
              (3.5, False, [297], False)]                           # a stale reply leaves no trace


def test_hits_within_one_second_share_one_patched_copy():
    entry = make_entry(_key(), cleaned("www.example.com. 300 IN A 192.0.2.1"), DEFAULTS, 0.0)
    previous = None
    for age, stale, ttls, same in AGED_STEPS:
        records = entry.records_at(age, stale)
        assert [rrset.ttl for rrset in _decoded(entry, age, stale).answer] == ttls
        assert (records is previous) == same, age
        previous = records


# -- the cache itself --------------------------------------------------------------------------------

def _key(name: str = "www.example.com", qtype: int = 1, dnssec_ok: bool = False) -> tuple:
    return name_to_wire(name), qtype, 1, dnssec_ok, False


def _entry(name: str = "www.example.com", qtype: int = 1, lifetime: int = 100, stored_at: float = 0.0,
           size: int = 0) -> Entry:
    return Entry(_key(name, qtype), 0, b"x" * size, 0, 0, (), (), len(name_to_wire(name)) + 4, stored_at,
                 lifetime, False)


def _decoded(entry: Entry, now: float, stale: bool = False):
    client = query("www.example.com.", "A")
    return decode(client_reply(client, entry.rcode, entry.records_at(now, stale), entry.ancount, entry.nscount,
                               1232, None))


def test_least_recently_used_goes_first():
    cache = Cache(max_entries=3, max_bytes=10**6)
    for name in ("a.example", "b.example", "c.example"):
        cache.put(_entry(name))
    assert cache.fresh(_key("a.example"), 1.0) is not None  # a is used: b is now the oldest
    cache.put(_entry("d.example"))
    assert [key[0] for key in cache.entries] == [name_to_wire(n) for n in ("c.example", "a.example", "d.example")]
    assert cache.evicted == 1


def test_bytes_are_bounded():
    cache = Cache(max_entries=100, max_bytes=3 * (ENTRY_OVERHEAD + 1000))
    for index in range(5):
        cache.put(_entry(f"n{index}.example", size=1000))
    assert len(cache) == 3 and cache.bytes == 3 * (ENTRY_OVERHEAD + 1000)
    cache.put(_entry("huge.example", size=10**6))  # larger than the whole cache: not stored at all
    assert len(cache) == 3 and _key("huge.example") not in cache.entries


def test_an_entry_stored_again_replaces_the_old_one():
    cache = Cache(max_entries=10, max_bytes=10**6)
    cache.put(_entry(size=10))
    cache.put(_entry(size=20))
    assert len(cache) == 1 and cache.bytes == ENTRY_OVERHEAD + 20


def test_flush_takes_every_type_of_a_name_and_nothing_else():
    cache = Cache(max_entries=10, max_bytes=10**6)
    for qtype in (1, 28, 15):
        cache.put(_entry("www.example.com", qtype))
    cache.put(_entry("example.com", 1))
    assert cache.flush(name_to_wire("www.example.com")) == 3
    assert list(cache.entries) == [_key("example.com")] and cache.by_name.keys() == {name_to_wire("example.com")}
    assert cache.flush(name_to_wire("nothing.example")) == 0
    assert cache.flush_all() == 1 and len(cache) == 0 and cache.bytes == 0


# (stale_for, seconds after expiry) -> fresh?, stale?, still held?
STALE_CASES = [
    (0, -1, True, False, True),
    (0, 0, False, False, False),  # expired: gone at once without serve-stale
    (60, 0, False, True, True),
    (60, 59, False, True, True),
    (60, 60, False, False, False),
]


@pytest.mark.parametrize("stale_for, after_expiry, fresh, stale, held", STALE_CASES)
def test_stale_window(stale_for, after_expiry, fresh, stale, held):
    cache = Cache(max_entries=10, max_bytes=10**6, stale_for=stale_for)
    cache.put(_entry(lifetime=100, stored_at=0.0))
    now = 100.0 + after_expiry
    assert (cache.stale(_key(), now) is not None) == stale
    assert (cache.fresh(_key(), now) is not None) == fresh
    assert (_key() in cache.entries) == held


def test_sweep_drops_what_can_no_longer_be_served():
    cache = Cache(max_entries=10, max_bytes=10**6, stale_for=10)
    cache.put(_entry("old.example", lifetime=5))
    cache.put(_entry("stale.example", lifetime=95))
    cache.put(_entry("fresh.example", lifetime=200))
    assert cache.sweep(100.0) == 1
    assert {key[0] for key in cache.entries} == {name_to_wire("stale.example"), name_to_wire("fresh.example")}


def test_sweep_looks_at_the_least_recently_used_only():
    cache = Cache(max_entries=10, max_bytes=10**6)
    for name in ("a.example", "b.example", "c.example"):
        cache.put(_entry(name, lifetime=5))
    assert cache.sweep(100.0, limit=2) == 2 and len(cache) == 1
