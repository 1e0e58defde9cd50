"""The probe service: scheduler bounds and timeouts, the versioned API, restart memory, webhooks."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dnsd.routing.health import FeedDocument, Status
from dnsd.model import ProbeCheck, ProbeSpec, ProbesSettings, Webhook
from probes.api import make_app
from probes.checks import ProbeResult
from probes.scheduler import ProbeService, transition_event
from probes.targets import Target
from probes.tracker import Transition
from probes.webhook import Notifier
from tests import harness


def target(replica: str, interval=0.05, timeout=0.04, fall=2, rise=2) -> Target:
    check = ProbeCheck(kind="tcp", address="127.0.0.1", port=9, scheme="http")
    return Target("contoso", replica, ProbeSpec((check,), interval=interval, jitter=0.0, timeout=timeout,
                                                fall=fall, rise=rise))


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


async def test_max_concurrent_bounds_rounds_in_flight():
    targets = [target(f"r{i}", interval=0.02, timeout=0.5) for i in range(10)]
    service = ProbeService(targets, ProbesSettings(max_concurrent=3))
    in_flight = peak = 0

    async def runner(t):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.03)
        in_flight -= 1
        return ProbeResult(True, "ok", 0.03)

    await service.start(runner)
    await harness.wait_until_async(lambda: peak >= 3, 5, "three rounds in flight")
    await service.stop()
    assert peak == 3


def status_of(service: ProbeService) -> Status:
    return service.states[("contoso", "eastus")].status


async def test_a_hung_round_fails_by_timeout_and_probing_goes_on():
    service = ProbeService([target("eastus", interval=0.05, timeout=0.05, fall=2)], ProbesSettings())
    calls = 0

    async def runner(t):
        nonlocal calls
        calls += 1
        await asyncio.sleep(60)  # hangs: the scheduler's own deadline must end it

    service_timeout = 0.05 + 1.0  # the scheduler allows the checks' timeout plus 1 s of slack
    await service.start(runner)
    await harness.wait_until_async(lambda: calls >= 2 and status_of(service) is Status.DEGRADED,
                                   2 * service_timeout + 3, "two hung rounds ended by the deadline")
    await service.stop()
    state = service.states[("contoso", "eastus")]
    assert calls >= 2 and state.status is Status.DEGRADED and "timeout" in state.reason


async def test_a_crashing_check_counts_as_a_failure_not_a_dead_loop():
    service = ProbeService([target("eastus", fall=1)], ProbesSettings())

    async def runner(t):
        raise RuntimeError("boom")

    await service.start(runner)
    await harness.wait_until_async(lambda: status_of(service) is Status.DEGRADED, 3, "the crashing check counted")
    await service.stop()
    state = service.states[("contoso", "eastus")]
    assert state.status is Status.DEGRADED and "probe error: RuntimeError: boom" in state.reason


def test_transitions_bump_the_generation_and_call_back():
    service = ProbeService([target("eastus")], ProbesSettings())
    seen = []
    service.on_transition.append(lambda t, moved, state: seen.append(transition_event(t, moved, "i")))
    first = service.generation
    for _ in range(2):
        service.apply(service.targets[0], ProbeResult(False, "HTTP 503", 0.01))
    assert service.generation == first + 1
    assert seen == [{"event": "status_changed", "registry": "contoso", "replica": "eastus", "before": "checking",
                     "after": "degraded", "reason": "2 consecutive failed checks (fall 2): HTTP 503",
                     "at": seen[0]["at"], "probe_instance": "i"}]


def test_degraded_status_survives_a_probes_restart(tmp_path):
    settings = ProbesSettings(state_file=str(tmp_path / "probes.json"))
    clock = Clock()
    first = ProbeService([target("eastus"), target("westeurope")], settings, clock=clock)
    for _ in range(2):
        first.apply(first.targets[0], ProbeResult(False, "HTTP 503", 0.01))
    clock.now += 1
    second = ProbeService([target("eastus"), target("westeurope")], settings, clock=clock)
    restored = second.states[("contoso", "eastus")]
    assert restored.status is Status.DEGRADED and restored.reason.startswith("restored: ")
    assert second.states[("contoso", "westeurope")].status is Status.CHECKING
    # the tracker goes on from there: rise good rounds bring it back
    for _ in range(2):
        second.apply(second.targets[0], ProbeResult(True, "HTTP 200", 0.01))
    assert second.states[("contoso", "eastus")].status is Status.ONLINE


def test_too_old_state_is_not_restored(tmp_path):
    settings = ProbesSettings(state_file=str(tmp_path / "probes.json"))
    clock = Clock()
    first = ProbeService([target("eastus")], settings, clock=clock)
    for _ in range(2):
        first.apply(first.targets[0], ProbeResult(False, "HTTP 503", 0.01))
    clock.now += 3600
    second = ProbeService([target("eastus")], settings, clock=clock)
    assert second.states[("contoso", "eastus")].status is Status.CHECKING


@pytest.fixture
async def api():
    clock = Clock()
    service = ProbeService([target("eastus", interval=1.0), target("westeurope", interval=1.0)],
                           ProbesSettings(), clock=clock)
    service._started_at = clock.now
    client = TestClient(TestServer(make_app(service)))
    await client.start_server()
    yield service, client, clock
    await client.close()


async def test_health_document_with_etag_and_304(api):
    service, client, clock = api
    response = await client.get("/v1/health")
    assert response.status == 200
    document = FeedDocument.from_json(await response.json())
    assert set(document.endpoints) == {("contoso", "eastus"), ("contoso", "westeurope")}
    etag = response.headers["ETag"]
    assert (await client.get("/v1/health", headers={"If-None-Match": etag})).status == 304
    for _ in range(2):
        service.apply(service.targets[0], ProbeResult(False, "HTTP 503", 0.01))
    changed = await client.get("/v1/health", headers={"If-None-Match": etag})
    assert changed.status == 200 and changed.headers["ETag"] != etag
    document = FeedDocument.from_json(await changed.json())
    assert document.endpoints[("contoso", "eastus")].status is Status.DEGRADED


async def test_a_stuck_probe_loop_is_reported_not_hidden(api):
    service, client, clock = api
    assert (await client.get("/healthz")).status == 200
    clock.now += 10  # no round finished for 10 intervals
    assert (await client.get("/v1/health")).status == 503
    body = await (await client.get("/healthz")).json()
    assert body["ok"] is False and "contoso/eastus" in body["stale"]


async def test_metrics_in_prometheus_format(api):
    service, client, clock = api
    service.apply(service.targets[0], ProbeResult(True, "HTTP 200", 0.01))
    text = await (await client.get("/metrics")).text()
    assert 'geotm_probe_rounds_total{registry="contoso",replica="eastus",result="ok"} 1.0' in text
    assert 'geotm_probe_status{registry="contoso",replica="eastus"} 0.5' in text


async def test_webhook_retries_with_backoff_then_delivers():
    received, attempts = [], []

    async def hook(request):
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            return web.Response(status=503)
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        notifier = Notifier(Webhook(str(server.make_url("/hook")), timeout=1, retries=4, backoff=0.05), session)
        task = asyncio.create_task(notifier.run())
        notifier.notify({"event": "status_changed", "replica": "eastus"})
        await harness.wait_until_async(lambda: received, 2, "the webhook delivered")
        task.cancel()
    assert received == [{"event": "status_changed", "replica": "eastus"}]
    assert len(attempts) == 3 and attempts[2] - attempts[1] >= 0.09  # backoff doubled: 0.05 then 0.1


async def test_webhook_gives_up_after_retries_and_never_blocks_the_caller():
    async with aiohttp.ClientSession() as session:
        notifier = Notifier(Webhook("http://127.0.0.1:9/hook", timeout=0.2, retries=1, backoff=0.01), session,
                            queue_size=2)
        started = time.monotonic()
        for i in range(5):
            notifier.notify({"n": i})  # returns at once, even with nobody listening
        assert time.monotonic() - started < 0.05
        assert notifier.dropped == 3 and notifier.queue.qsize() == 2
        assert await notifier.deliver({"n": "x"}) is False
        assert notifier.failed == 1


def test_transition_event_shape():
    moved = Transition(Status.ONLINE, Status.DEGRADED, "3 consecutive failed checks", 12.5)
    event = transition_event(target("eastus"), moved, "host:1:2")
    assert event["before"] == "online" and event["after"] == "degraded" and event["at"] == 12.5


@pytest.mark.parametrize("downtime,restored", [(5.0, True), (20.0, False)])
def test_a_verdict_dnsd_already_expired_is_not_restored(tmp_path, downtime, restored):
    """probes down longer than dnsd's health TTL: dnsd failed open; the old verdict must not return."""
    settings = ProbesSettings(state_file=str(tmp_path / "probes.json"))
    clock = Clock()
    first = ProbeService([target("eastus")], settings, clock=clock, verdict_ttl=15.0)
    for _ in range(2):
        first.apply(first.targets[0], ProbeResult(False, "HTTP 503", 0.01))
    clock.now += downtime
    second = ProbeService([target("eastus")], settings, clock=clock, verdict_ttl=15.0)
    expected = Status.DEGRADED if restored else Status.CHECKING
    assert second.states[("contoso", "eastus")].status is expected


@pytest.mark.parametrize("with_token,stale", [(False, ["contoso/eastus", "contoso/westeurope"]), (True, 2)],
                         ids=["open-probes-names-targets", "token-probes-only-counts"])
async def test_open_healthz_names_no_targets_when_a_token_guards_the_verdicts(tmp_path, with_token, stale):
    from dnsd.common.secretfile import SecretFile
    clock = Clock()
    service = ProbeService([target("eastus", interval=1.0), target("westeurope", interval=1.0)],
                           ProbesSettings(), clock=clock)
    service._started_at = clock.now
    (tmp_path / "token").write_text("t0k3n\n")
    token = SecretFile(str(tmp_path / "token"), "probes token") if with_token else None
    client = TestClient(TestServer(make_app(service, token)))
    await client.start_server()
    try:
        clock.now += 10
        response = await client.get("/healthz")  # no token sent: /healthz is open either way
        assert response.status == 503 and (await response.json())["stale"] == stale
        assert (await client.get("/v1/health")).status == (401 if with_token else 503)
        authorized = await client.get("/v1/health", headers={"Authorization": "Bearer t0k3n"})
        assert authorized.status == 503  # past the token: the loop is behind, said as before
    finally:
        await client.close()


async def test_a_rotated_token_file_applies_without_a_restart(tmp_path):
    from dnsd.common.secretfile import SecretFile
    service = ProbeService([target("eastus", interval=1.0)], ProbesSettings())
    service._started_at = service.clock()
    path = tmp_path / "token"
    path.write_text("old-token\n")
    client = TestClient(TestServer(make_app(service, SecretFile(str(path), "probes token"))))
    await client.start_server()
    try:
        async def status(token: str) -> int:
            return (await client.get("/v1/health", headers={"Authorization": f"Bearer {token}"})).status
        assert [await status("old-token"), await status("new-token")] == [200, 401]
        path.write_text("new-token-longer\n")
        assert [await status("old-token"), await status("new-token-longer")] == [401, 200]
        path.unlink()  # unreadable: refused, never served without the token
        assert await status("new-token-longer") == 503
    finally:
        await client.close()
