"""How a reload keeps the event loop answering (dnsd.serving.offloop, Dnsd.reload): the build runs in a niced
thread of its own with a short GIL switch interval and no cyclic-GC pass over the big heap, health
that changes during the build is kept, and the old tables are freed in slices; so is what a health or
override swap leaves behind (the emptied packet caches)."""
from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading

import pytest

from dnsd.serving import offloop, service
from dnsd.config import load_config
from dnsd.routing.health import EndpointHealth, HealthSnapshot, Status
from dnsd.serving.service import Dnsd
from tests.dnstest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
from rebuild import config_text  # noqa: E402


@pytest.fixture
def big(tmp_path):
    """A running Dnsd on a 300-registry config (enough objects for the GC to want full passes)."""
    path = tmp_path / "big.yaml"
    path.write_text(config_text(300))
    return Dnsd(load_config(path)), path


def watch_builds(monkeypatch) -> list[dict]:
    """Record, inside each snapshot build, the thread's nice, the switch interval and the GC state."""
    seen: list[dict] = []
    real = service.new_snapshot

    def recording(*args, **kwargs):
        seen.append({"thread": threading.current_thread().name,
                     "nice": os.getpriority(os.PRIO_PROCESS, threading.get_native_id()),
                     "switch": sys.getswitchinterval(), "gc": gc.isenabled()})
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "new_snapshot", recording)
    return seen


@pytest.mark.slow
async def test_the_build_runs_in_a_niced_thread_with_a_short_switch_interval_and_no_gc(big, monkeypatch):
    dnsd, path = big
    path.write_text(config_text(300, seed=3))
    seen = watch_builds(monkeypatch)
    full_passes = []
    callback = lambda phase, info: full_passes.append(info) if phase == "stop" and info["generation"] == 2 else None  # noqa: E731
    gc.callbacks.append(callback)
    switch_before, nice_before = sys.getswitchinterval(), os.getpriority(os.PRIO_PROCESS, 0)
    try:
        result = await dnsd.reload(actor="test")
    finally:
        gc.callbacks.remove(callback)
    assert result.ok
    assert seen == [{"thread": "dnsd-build", "nice": nice_before + offloop.WORKER_NICE,
                     "switch": offloop.SWITCH_INTERVAL, "gc": False}]
    assert full_passes == [], "a full GC pass ran during the reload"
    assert (sys.getswitchinterval(), gc.isenabled()) == (switch_before, True)  # restored after
    assert os.getpriority(os.PRIO_PROCESS, 0) == nice_before  # the loop's thread is not niced


@pytest.mark.slow
async def test_health_that_changes_during_the_build_is_kept(big, monkeypatch):
    dnsd, path = big
    path.write_text(config_text(300, seed=4))
    registry = dnsd.snapshot.config.registries[0]
    replica = registry.replicas[0].name
    loop = asyncio.get_running_loop()
    real = service.new_snapshot
    degraded = HealthSnapshot().with_status(registry.name, replica, EndpointHealth(Status.DEGRADED, "probe", 0.0))

    def build_while_a_probe_verdict_arrives(*args, **kwargs):
        applied = asyncio.run_coroutine_threadsafe(_apply(dnsd, degraded), loop)
        applied.result(timeout=10)  # the loop applies it while this thread is still building
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "new_snapshot", build_while_a_probe_verdict_arrives)
    result = await dnsd.reload(actor="test")
    assert result.ok
    health = dnsd.snapshot.health.of(registry.name, replica)
    assert health.status is Status.DEGRADED, "the verdict that arrived during the build was lost"
    assert replica not in service.serving_names(dnsd.snapshot.plans[0])


async def _apply(dnsd: Dnsd, health: HealthSnapshot) -> None:
    dnsd.apply_health(health)


@pytest.mark.slow
async def test_old_tables_are_emptied_in_slices_after_the_swap(big, monkeypatch):
    dnsd, path = big
    old = dnsd.snapshot.compiled
    tables = [*old.exact, *old.other]
    assert sum(map(len, tables)) > 10 * offloop.RELEASE_SLICE
    sizes_seen: list[int] = []
    real_sleep = asyncio.sleep

    async def sleep(delay, *args):
        if delay == 0:
            sizes_seen.append(sum(map(len, tables)))
        return await real_sleep(delay, *args)

    monkeypatch.setattr(offloop.asyncio, "sleep", sleep)
    del old
    # `tables` holds the dicts, not the CompiledZone: the reload still owns the zone alone
    path.write_text(config_text(300, seed=5))
    assert (await dnsd.reload(actor="test")).ok
    assert sum(map(len, tables)) == 0
    shrinking = [size for size in sizes_seen if size > 0]
    assert len(shrinking) >= 10 and shrinking == sorted(shrinking, reverse=True)
    assert all(a - b <= offloop.RELEASE_SLICE for a, b in zip(shrinking, shrinking[1:]))


async def test_a_health_swap_frees_the_old_packet_cache_in_slices_between_queries(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(config_text(3))
    dnsd = Dnsd(load_config(path))
    old_cache = dnsd.engine.cache
    old_cache.update({(i.to_bytes(4, "big"), "127.0.0.1", False): (b"", (), None)
                      for i in range(3 * offloop.RELEASE_SLICE)})
    first = dnsd.snapshot.config.registries[0]
    dnsd.apply_health(dnsd.snapshot.health.with_status(first.name, first.replicas[0].name,
                                                       EndpointHealth(Status.DEGRADED, "test")))
    assert dnsd.engine.cache == {} and dnsd.engine.cache is not old_cache
    assert len(old_cache) == 3 * offloop.RELEASE_SLICE   # not freed in one go inside the swap
    for _ in range(10):
        await asyncio.sleep(0)
    assert not old_cache
