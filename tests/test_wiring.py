"""The wiring apart from the state: Dnsd refuses changes with domain errors (no HTTP in it) that the
admin API maps to statuses; the status page renders from the status document alone; every task a
service starts is kept, and cancelled and awaited when it stops (dnsd's SIGHUP reload included)."""
from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from dnsd import app
from dnsd.ops import admin
from dnsd.serving import service
from dnsd.config import load_config
from dnsd.common.lifecycle import TaskSet
from dnsd.routing.overrides import OverrideStore
from dnsd.serving.service import (Dnsd, InvalidChange, NoSuchOverride, Refused, UnknownReplica,
                          WouldLeaveNoReplica)
from dnsd.ops.statuspage import render_status_page
from tests.dnstest import isolated_example


def make_dnsd(tmp_path) -> Dnsd:
    config = load_config(isolated_example(tmp_path))
    return Dnsd(config, OverrideStore(config.admin.state_file, None))


# -- refusals: domain errors in service, HTTP statuses in admin -----------------------------------

REFUSAL_CASES = [
    # (overrides set first, the call, the error, words in its message)
    ([], ("set", "contoso", "northpole", "drain", None), UnknownReplica, "no replica contoso/northpole"),
    ([], ("set", "nobody", "eastus", "drain", None), UnknownReplica, "no replica nobody/eastus"),
    ([], ("set", "contoso", "eastus", "nap", None), InvalidChange, "unknown override 'nap'"),
    ([], ("set", "contoso", "eastus", "drain", -5.0), InvalidChange, "must be positive"),
    ([], ("remove", "contoso", "eastus", None), NoSuchOverride, "has no an override"),
    ([("eastus", "drain")], ("remove", "contoso", "eastus", "force_down"), NoSuchOverride, "it has drain"),
    ([("eastus", "drain"), ("westeurope", "drain")], ("set", "contoso", "southeastasia", "drain", None),
     WouldLeaveNoReplica, "last serving replica"),
]


@pytest.mark.parametrize("before, call, error, words", REFUSAL_CASES)
def test_dnsd_refuses_with_a_domain_error_and_no_http_status(tmp_path, before, call, error, words):
    dnsd = make_dnsd(tmp_path)
    for replica, kind in before:
        dnsd.set_override("contoso", replica, kind, None, "test", "tester")
    with pytest.raises(error) as raised:
        if call[0] == "set":
            dnsd.set_override(*call[1:], "test", "tester")
        else:
            dnsd.remove_override(call[1], call[2], "tester", kind=call[3])
    assert words in str(raised.value)
    assert not hasattr(raised.value, "status")


def test_every_refusal_of_the_service_has_an_http_status_in_admin():
    refusals = {cls for cls in vars(service).values() if isinstance(cls, type) and issubclass(cls, Refused)}
    refusals.discard(Refused)
    assert refusals and refusals == set(admin.REFUSAL_STATUS)


# -- the status page from the status document ------------------------------------------------------

DOC = {
    "config": {"version": "abc123def456", "source": "/etc/geotm/geotm.yaml"}, "generation": 7,
    "timeline": [{"at": 0.0, "event": "health_changed", "registry": "acme", "replica": "moon",
                  "status": "degraded", "reason": "HTTP 503 from the moon"}],
    "health": {"feeds": [{"url": "https://probes.internal/v1/health", "error": "timed out", "age_seconds": 12.0}],
               "expired": False},
    "registries": [{"name": "acme", "routing": "performance", "all_down_policy": "serve_all",
                    "all_down_active": False, "short_ttl": True, "reason": "moon degraded",
                    "replicas": [{"name": "moon", "location": "lunar", "status": "degraded", "reason": "HTTP 503",
                                  "trend": None, "age_seconds": 30.0, "global_routing": True, "serving": False,
                                  "override": {"registry": "acme", "replica": "moon", "kind": "drain",
                                               "reason": "maintenance", "actor": "ops@host", "created_at": 0.0,
                                               "expires_at": None},
                                  "recent_share": 0.25}]}],
}

PAGE_CASES = [
    # (details, shown, not shown)
    (True, ["acme", "moon", "lunar", "drained", "maintenance", "ops@host", "probes.internal", "abc123def456", "25%"],
     []),
    (False, ["acme", "moon", "lunar", "drained", "degraded"],
     ["maintenance", "ops@host", "probes.internal", "abc123def456", "HTTP 503", "25%"]),
]


@pytest.mark.parametrize("details, shown, hidden", PAGE_CASES)
def test_the_status_page_renders_from_a_status_document_alone(details, shown, hidden):
    html = render_status_page(DOC, details=details)
    for text in shown:
        assert text in html, text
    for text in hidden:
        assert text not in html, text


# -- tasks kept, cancelled and awaited ---------------------------------------------------------------

async def test_a_task_set_keeps_tasks_until_done_and_awaits_them_when_closed():
    tasks = TaskSet()
    finished, cleaned = asyncio.Event(), []

    async def quick():
        finished.set()

    async def forever(name):
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits: close() must wait for it
            cleaned.append(name)

    done = tasks.start(quick())
    assert done in tasks
    await finished.wait()
    await asyncio.sleep(0)
    assert done not in tasks and len(tasks) == 0  # removed once done
    running = [tasks.start(forever(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert len(tasks) == 3
    await tasks.close()
    assert sorted(cleaned) == [0, 1, 2] and all(task.cancelled() for task in running) and len(tasks) == 0


async def _until(condition, timeout=10.0):
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_dnsd_stops_a_sighup_reload_still_running_before_it_returns(tmp_path, monkeypatch):
    """SIGHUP starts a reload; SIGTERM while it runs: serve cancels it and waits for it to end
    before returning (it used to be left running, unreferenced, past shutdown)."""
    config = load_config(isolated_example(tmp_path))
    config = replace(config, admin=replace(config.admin, listen=None))  # as `--admin-listen off`
    reload_started, reload_ended = asyncio.Event(), []

    async def slow_reload(self, path=None, actor="geotm", by_signal=False):
        reload_started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.05)
            reload_ended.append(actor)

    monkeypatch.setattr(Dnsd, "reload", slow_reload)
    with capture_logs() as logs:
        serving = asyncio.create_task(app.serve(config, [("127.0.0.1", 0)]))
        await _until(lambda: any(e["event"] == "dnsd_started" for e in logs) or serving.done())
        assert not serving.done()
        os.kill(os.getpid(), signal.SIGHUP)
        async with asyncio.timeout(10):
            await reload_started.wait()
        os.kill(os.getpid(), signal.SIGTERM)
        async with asyncio.timeout(30):
            await serving
        assert reload_ended == ["SIGHUP"]  # ended before serve returned, not after
