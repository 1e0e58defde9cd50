"""The probe loop: one task per replica (interval + jitter, a timeout per round, a bound on rounds in
flight), feeding the trackers; owns the published health document."""
from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from types import MappingProxyType
from typing import Awaitable, Callable

import aiohttp
import structlog

from dnsd.routing.health import RECOVERING, SUSPECT, EndpointHealth, FeedDocument, Status
from dnsd.model import ProbesSettings
from probes import checks, state as state_file
from probes.checks import ProbeResult
from probes.metrics import ProbeMetrics
from probes.registryauth import RegistryAuth
from probes.targets import Target
from probes.tracker import TrackerState, Transition, observe

log = structlog.get_logger(__name__)

RoundRunner = Callable[[Target], Awaitable[ProbeResult]]


class ProbeService:
    def __init__(self, targets: list[Target], settings: ProbesSettings, metrics: ProbeMetrics | None = None,
                 clock: Callable[[], float] = time.time, verdict_ttl: float | None = None,
                 registry_auth: RegistryAuth | None = None):
        """verdict_ttl: how long dnsd trusts a verdict (config health.ttl). A saved verdict older than
        that is not restored: dnsd has already failed open past it, and bringing it back would make
        routing flap until the next rounds decide afresh."""
        self.targets = targets
        self.settings = settings
        self.registry_auth = registry_auth  # credentials for registries that require auth (oci checks)
        self.clock = clock
        self.metrics = metrics or ProbeMetrics()
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{int(clock())}"
        self.states: dict[tuple[str, str], TrackerState] = {t.key: TrackerState() for t in targets}
        self.generation = 1
        self.on_transition: list[Callable[[Target, Transition, TrackerState], None]] = []
        self.limit = asyncio.Semaphore(settings.max_concurrent)
        self.session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task] = []
        if settings.state_file:
            # An old verdict costs little (rise good rounds undo it, and dnsd's TTL guards staleness), but
            # forgetting a degraded replica on every restart would route clients to it: keep 5 minutes.
            longest = max((t.spec.interval for t in targets), default=5.0)
            max_age = max(10 * longest, 300.0)
            if verdict_ttl is not None:
                max_age = min(max_age, verdict_ttl)
            restored = state_file.load_states(settings.state_file, clock(), max_age=max_age)
            for key, restored_state in restored.items():
                if key in self.states:
                    self.states[key] = restored_state
                    log.info("probe_state_restored", registry=key[0], replica=key[1],
                             status=restored_state.status.value, reason=restored_state.reason)

    # -- the published document ------------------------------------------------------------

    def document(self) -> FeedDocument:
        return FeedDocument(
            instance=self.instance, generation=self.generation, generated_at=self.clock(),
            endpoints=MappingProxyType({key: EndpointHealth(s.status, s.reason, s.since, trend_of(s))
                                        for key, s in self.states.items()}))

    def stale_targets(self) -> list[str]:
        """Targets whose last round finished too long ago: the loop is stuck, our word is not current."""
        now = self.clock()
        stale = []
        for target in self.targets:
            checked_at = self.states[target.key].checked_at
            limit = 3 * target.spec.interval * (1 + target.spec.jitter) + target.spec.timeout
            started = self._started_at if checked_at == 0 else checked_at
            if now - started > limit:
                stale.append(target.label)
        return stale

    # -- running ---------------------------------------------------------------------------

    async def start(self, runner: RoundRunner | None = None) -> None:
        self._started_at = self.clock()
        if runner is None:
            self.session = checks.make_session(limit=self.settings.max_concurrent * 4)
            runner = self.run_round
        for target in self.targets:
            self._tasks.append(asyncio.create_task(self._loop(target, runner), name=f"probe {target.label}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def run_round(self, target: Target) -> ProbeResult:
        """Every check of the target at once; the round fails on the first failing check (its reason)."""
        spec = target.spec
        assert self.session is not None
        started = time.monotonic()
        results = await asyncio.gather(*(checks.run_check(check, self.session, spec.timeout, self.registry_auth)
                                         for check in spec.checks))
        for check, result in zip(spec.checks, results):
            self.metrics.observe_check(target, check, result)
        failed = [r for r in results if not r.ok]
        elapsed = time.monotonic() - started
        if failed:
            return ProbeResult(False, failed[0].reason, elapsed, failed[0].status_code)
        return ProbeResult(True, "; ".join(r.reason for r in results), elapsed, results[0].status_code)

    async def _loop(self, target: Target, runner: RoundRunner) -> None:
        spec = target.spec
        # spread the first rounds so N targets do not fire at the same instant
        await asyncio.sleep(random.uniform(0, min(spec.interval, 1.0) * spec.jitter))
        while True:
            started = time.monotonic()
            async with self.limit:  # the probe-load bound: at most max_concurrent rounds in flight
                try:
                    async with asyncio.timeout(spec.timeout + 1.0):  # belt and braces over the checks' own
                        result = await runner(target)
                except TimeoutError:
                    result = ProbeResult(False, f"timeout after {spec.timeout:g}s", spec.timeout)
                except Exception as err:  # a bug in a check must not stop probing
                    log.exception("probe_round_failed", target=target.label)
                    result = ProbeResult(False, f"probe error: {type(err).__name__}: {err}", 0.0)
            self.apply(target, result)
            period = spec.interval * (1 + random.uniform(0, spec.jitter))
            await asyncio.sleep(max(0.0, period - (time.monotonic() - started)))

    def apply(self, target: Target, result: ProbeResult) -> Transition | None:
        spec = target.spec
        old_state = self.states[target.key]
        new_state, transition = observe(old_state, result.ok, result.reason, self.clock(), spec.fall, spec.rise)
        self.states[target.key] = new_state
        if transition is None and trend_of(new_state) != trend_of(old_state):
            self.generation += 1  # dnsd shortens the traffic-manager TTL while a change is likely
        self.metrics.observe_round(target, result, new_state)
        if transition is not None:
            self.generation += 1
            log.info("status_changed", registry=target.registry, replica=target.replica,
                     before=transition.before.value, after=transition.after.value, reason=transition.reason)
            if self.settings.state_file:
                try:
                    state_file.save_states(self.settings.state_file, self.states)
                except OSError as err:
                    log.warning("probe_state_not_saved", path=self.settings.state_file, error=str(err))
            for callback in self.on_transition:
                callback(target, transition, new_state)
        return transition


def trend_of(state: TrackerState) -> str:
    """suspect: online with failures in a row; recovering: degraded with successes in a row."""
    if state.status is Status.ONLINE and state.failures:
        return SUSPECT
    if state.status is Status.DEGRADED and state.successes:
        return RECOVERING
    return ""


def transition_event(target: Target, transition: Transition, instance: str) -> dict:
    """The webhook body for one status change."""
    return {"event": "status_changed", "registry": target.registry, "replica": target.replica,
            "before": transition.before.value, "after": transition.after.value, "reason": transition.reason,
            "at": transition.at, "probe_instance": instance}
