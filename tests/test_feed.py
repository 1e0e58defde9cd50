"""dnsd's health feed against real in-process probe-like HTTP servers: ETag, last good document on
errors, expiry (fail open), quorum across vantage points, persistence across restarts."""
from __future__ import annotations

import json
import threading

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from dnsd.routing import feed as feed_module
from dnsd.routing.feed import HealthFeed
from dnsd.routing.health import EndpointHealth, FeedDocument, Status
from dnsd.model import HealthFeedSettings

KNOWN = {("contoso", "eastus"), ("contoso", "westeurope")}


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def document(generation: int, **statuses: str) -> dict:
    """statuses: replica=STATUS or replica=STATUS:TREND, e.g. eastus="online:suspect"."""
    endpoints = {}
    for rep, text in statuses.items():
        status, _, trend = text.partition(":")
        endpoints[("contoso", rep)] = EndpointHealth(Status(status), f"{rep} is {status}", 900.0, trend)
    return FeedDocument("probe-a", generation, 1000.0, endpoints).to_json()


class FakeProbes:
    """A real HTTP server whose answer the test sets: a document, a status code, or raw bytes."""

    def __init__(self):
        self.body: bytes = json.dumps(document(1, eastus="online", westeurope="online")).encode()
        self.status = 200
        self.etag = '"1"'
        self.requests: list[str | None] = []
        app = web.Application()
        app.router.add_get("/v1/health", self.handle)
        self.server = TestServer(app, host="127.0.0.1")

    async def handle(self, request):
        self.requests.append(request.headers.get("If-None-Match"))
        if self.status == 200 and request.headers.get("If-None-Match") == self.etag:
            return web.Response(status=304, headers={"ETag": self.etag})
        return web.Response(status=self.status, body=self.body, headers={"ETag": self.etag},
                            content_type="application/json")

    def serve(self, doc: dict, etag: str):
        self.body, self.etag, self.status = json.dumps(doc).encode(), etag, 200

    @property
    def url(self) -> str:
        return str(self.server.make_url("/v1/health"))


@pytest.fixture
async def probes_servers():
    servers = [FakeProbes() for _ in range(3)]
    for server in servers:
        await server.server.start_server()
    yield servers
    for server in servers:
        await server.server.close()


def make_feed(urls, clock, applied, **settings):
    return HealthFeed(HealthFeedSettings(feeds=tuple(urls), ttl=settings.pop("ttl", 10.0),
                                         poll_interval=0.1, **settings),
                      KNOWN, applied.append, clock)


async def poll(feed, session):
    for state in feed.feeds:
        await feed.fetch(session, state)
    feed.refresh()


def status_of(applied, replica="eastus") -> Status:
    return applied[-1].of("contoso", replica).status


async def test_degraded_verdict_is_applied_and_etag_is_used(probes_servers):
    server = probes_servers[0]
    clock, applied = Clock(), []
    feed = make_feed([server.url], clock, applied)
    async with aiohttp.ClientSession() as session:
        await poll(feed, session)
        assert status_of(applied) is Status.ONLINE
        await poll(feed, session)
        assert server.requests == [None, '"1"']          # second poll conditional, answered 304
        assert len(applied) == 1                          # nothing changed: no new snapshot
        server.serve(document(2, eastus="degraded", westeurope="online"), '"2"')
        await poll(feed, session)
    assert status_of(applied) is Status.DEGRADED and "eastus is degraded" in applied[-1].of("contoso", "eastus").reason


@pytest.mark.parametrize("defect,body,status", [
    ("not JSON", b"<html>oops", 200),
    ("wrong format tag", json.dumps({"format": "other/9"}).encode(), 200),
    ("bad status value", json.dumps(dict(document(5, eastus="online"),
                                         endpoints=[{"registry": "contoso", "replica": "eastus", "status": "up",
                                                     "reason": "", "since": 1}])).encode(), 200),
    ("truncated", json.dumps(document(5, eastus="online"))[:40].encode(), 200),
    ("server error", b"", 500),
])
async def test_broken_answers_keep_the_last_good_document(probes_servers, defect, body, status):
    server = probes_servers[0]
    server.serve(document(1, eastus="degraded", westeurope="online"), '"1"')
    clock, applied = Clock(), []
    feed = make_feed([server.url], clock, applied)
    async with aiohttp.ClientSession() as session:
        await poll(feed, session)
        server.body, server.status, server.etag = body, status, '"bad"'
        await poll(feed, session)
    assert feed.feeds[0].error is not None
    assert status_of(applied) is Status.DEGRADED           # still the last good verdict


async def test_expired_health_fails_open_and_recovers(probes_servers):
    server = probes_servers[0]
    server.serve(document(1, eastus="degraded", westeurope="online"), '"1"')
    clock, applied = Clock(), []
    feed = make_feed([server.url], clock, applied, ttl=5.0)
    async with aiohttp.ClientSession() as session:
        await poll(feed, session)
        assert status_of(applied) is Status.DEGRADED
        await server.server.close()                      # probes gone
        clock.now += 4.0
        await poll(feed, session)
        assert status_of(applied) is Status.DEGRADED and not feed.expired   # within the TTL: last verdict
        clock.now += 2.0
        await poll(feed, session)
    assert feed.expired
    assert status_of(applied) is Status.ONLINE
    assert "health expired" in applied[-1].of("contoso", "eastus").reason


@pytest.mark.parametrize("votes,quorum,expected", [
    (("degraded", "online", "online"), 0, Status.ONLINE),       # majority is 2: one probe's trouble is not enough
    (("degraded", "degraded", "online"), 0, Status.DEGRADED),
    (("degraded", "online", "online"), 1, Status.DEGRADED),     # quorum 1: any probe
    (("degraded", "degraded", "online"), 3, Status.ONLINE),
    (("degraded", "degraded", "degraded"), 3, Status.DEGRADED),
])
async def test_quorum_across_vantage_points(probes_servers, votes, quorum, expected):
    for server, vote in zip(probes_servers, votes):
        server.serve(document(1, eastus=vote, westeurope="online"), '"1"')
    clock, applied = Clock(), []
    feed = make_feed([s.url for s in probes_servers], clock, applied, quorum=quorum)
    async with aiohttp.ClientSession() as session:
        await poll(feed, session)
    assert status_of(applied) is expected


@pytest.mark.parametrize("votes,expected", [
    # one probe: its trend is dnsd's trend
    (("online:suspect",), "online:suspect"),
    (("degraded:recovering",), "degraded:recovering"),
    (("online",), "online"),
    (("degraded",), "degraded"),
    (("checking:suspect",), "checking:suspect"),
    # three, majority quorum: one probe seeing the verdict about to change is enough to shorten the TTL
    (("online:suspect", "online", "online"), "online:suspect"),
    (("degraded:recovering", "degraded", "online"), "degraded:recovering"),
    (("degraded", "degraded", "online:suspect"), "degraded"),      # suspect is about online verdicts
    (("degraded", "online:suspect", "online"), "online:suspect"),  # below quorum, another probe suspects
    (("degraded", "online", "online"), "online"),                  # below quorum, nobody suspects
    (("degraded:recovering", "online", "online"), "online"),       # recovering is about degraded verdicts
])
async def test_trend_passes_through_the_feed(probes_servers, votes, expected):
    for server, vote in zip(probes_servers, votes):
        server.serve(document(1, eastus=vote, westeurope="online"), '"1"')
    clock, applied = Clock(), []
    feed = make_feed([s.url for s in probes_servers[:len(votes)]], clock, applied)
    async with aiohttp.ClientSession() as session:
        await poll(feed, session)
    health = applied[-1].of("contoso", "eastus")
    assert f"{health.status.value}:{health.trend}".rstrip(":") == expected


async def test_a_trend_change_alone_makes_a_new_snapshot(probes_servers):
    server = probes_servers[0]
    clock, applied = Clock(), []
    feed = make_feed([server.url], clock, applied)
    async with aiohttp.ClientSession() as session:
        await poll(feed, session)
        server.serve(document(2, eastus="online:suspect", westeurope="online"), '"2"')
        await poll(feed, session)
        server.serve(document(3, eastus="online", westeurope="online"), '"3"')
        await poll(feed, session)
    assert [(s.of("contoso", "eastus").status, s.of("contoso", "eastus").trend) for s in applied] == [
        (Status.ONLINE, ""), (Status.ONLINE, "suspect"), (Status.ONLINE, "")]


SILENT_QUORUM = [
    # (each feed's vote on eastus, feeds that go silent past the TTL, quorum, expected)
    (("degraded", "degraded"), (1,), 0, Status.DEGRADED),          # two probes, one dies: the failover holds
    (("degraded", "online"), (), 0, Status.ONLINE),                # two probes disagree: majority of 2 is 2
    (("degraded", "degraded", "degraded"), (1, 2), 0, Status.DEGRADED),   # the last one answering decides
    (("degraded", "degraded", "online"), (0,), 0, Status.ONLINE),  # 1 of the 2 answering: no majority
    (("online", "degraded", "degraded"), (0,), 0, Status.DEGRADED),
    (("degraded", "degraded", "degraded"), (1, 2), 2, Status.ONLINE),     # a number is absolute
    (("degraded", "degraded"), (0, 1), 0, Status.ONLINE),          # all silent: expired, fail open
]


@pytest.mark.parametrize("votes,silent,quorum,expected", SILENT_QUORUM,
                         ids=[f"{'-'.join(v)}-silent{''.join(map(str, s)) or 'none'}-q{q}"
                              for v, s, q, _ in SILENT_QUORUM])
async def test_majority_counts_only_the_feeds_that_answer(probes_servers, votes, silent, quorum, expected):
    servers = probes_servers[:len(votes)]
    for server, vote in zip(servers, votes):
        server.serve(document(1, eastus=vote, westeurope="online"), '"1"')
    clock, applied = Clock(), []
    feed = make_feed([s.url for s in servers], clock, applied, ttl=5.0, quorum=quorum)
    async with aiohttp.ClientSession() as session:
        await poll(feed, session)
        for index in silent:
            await servers[index].server.close()
        clock.now += 6.0
        await poll(feed, session)
    assert status_of(applied) is expected
    assert feed.expired == (len(silent) == len(votes))


async def test_state_survives_a_restart(probes_servers, tmp_path):
    server = probes_servers[0]
    server.serve(document(1, eastus="degraded", westeurope="online"), '"1"')
    state = tmp_path / "dnsd-health.json"
    clock, applied = Clock(), []
    feed = make_feed([server.url], clock, applied, state_file=str(state))
    async with aiohttp.ClientSession() as session:
        await poll(feed, session)
    feed.save_state(force=True)
    assert state.exists()

    clock.now += 3.0
    restarted_applied = []
    restarted = make_feed([server.url], clock, restarted_applied, state_file=str(state))
    restarted.load_state()
    restarted.refresh()                     # before any fetch: what was on disk applies
    assert status_of(restarted_applied) is Status.DEGRADED

    clock.now += 20.0                       # but it still expires by the TTL
    restarted.refresh()
    assert status_of(restarted_applied) is Status.ONLINE


async def test_state_is_written_off_the_event_loop(probes_servers, tmp_path, monkeypatch):
    """The poll loop's state save: the same file as save_state, its write and fsync in another thread."""
    server = probes_servers[0]
    server.serve(document(1, eastus="degraded", westeurope="online"), '"1"')
    clock, applied = Clock(), []
    written_by = []
    write = feed_module.write_text_atomically

    def recording_write(path, text):
        written_by.append(threading.get_ident())
        write(path, text)

    monkeypatch.setattr(feed_module, "write_text_atomically", recording_write)
    on_loop = make_feed([server.url], clock, applied, state_file=str(tmp_path / "sync.json"))
    off_loop = make_feed([server.url], clock, applied, state_file=str(tmp_path / "thread.json"))
    async with aiohttp.ClientSession() as session:
        await poll(on_loop, session)
        await poll(off_loop, session)
    on_loop.save_state(force=True)
    await off_loop.save_state_off_loop(force=True)
    assert written_by[0] == threading.get_ident() and written_by[1] != threading.get_ident()
    assert (tmp_path / "thread.json").read_text() == (tmp_path / "sync.json").read_text()
    await off_loop.save_state_off_loop()                     # not due: 5 s since the last save
    assert len(written_by) == 2


async def test_unreadable_state_file_is_ignored(tmp_path):
    state = tmp_path / "dnsd-health.json"
    state.write_text("{not json")
    applied = []
    feed = make_feed(["http://127.0.0.1:9/v1/health"], Clock(), applied, state_file=str(state))
    feed.load_state()
    assert all(f.document is None for f in feed.feeds)


async def test_no_verdict_yet_is_not_expired():
    applied = []
    feed = make_feed(["http://127.0.0.1:9/v1/health"], Clock(), applied)
    feed.refresh()
    assert not feed.expired
    assert status_of(applied) is Status.ONLINE
