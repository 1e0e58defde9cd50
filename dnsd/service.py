"""`dnsd serve`: load the config, build the first snapshot, run listeners and the health feed until
SIGTERM/SIGINT; every health change swaps in a new snapshot and logs what routing changed and why."""
from __future__ import annotations

import asyncio
from dataclasses import replace

import structlog

from dnsd.feed import HealthFeed
from dnsd.health import HealthSnapshot
from dnsd.model import Config
from dnsd.policy import RoutingPlan
from dnsd.runtime import QueryEngine, Snapshot, build_plans, new_snapshot
from dnsd.server import DnsServer, ListenerSettings, StopSignals

log = structlog.get_logger(__name__)


def serving_names(plan: RoutingPlan) -> list[str]:
    return [plan.registry.replicas[i].name for i in plan.serving]


def log_routing(snapshot: Snapshot, previous: Snapshot | None = None) -> None:
    """One event per registry whose global routing changed (all of them at start): what and why."""
    for index, plan in enumerate(snapshot.plans):
        before = previous.plans[index] if previous is not None and index < len(previous.plans) else None
        if before is not None and (before.serving, before.all_down, before.servfail) == \
                (plan.serving, plan.all_down, plan.servfail):
            continue
        event = "routing" if before is None else "routing_changed"
        fields = dict(registry=plan.registry.name, method=plan.registry.routing, serving=serving_names(plan),
                      all_down=plan.all_down, reason=plan.reason)
        if before is not None:
            fields["serving_before"] = serving_names(before)
        if plan.all_down:
            log.warning(event, all_down_policy=plan.registry.all_down.mode, **fields)
        else:
            log.info(event, **fields)


class Dnsd:
    """The running server: owns the engine's snapshot swaps and what the admin API reports."""

    def __init__(self, config: Config):
        self.engine = QueryEngine(new_snapshot(config))
        self.feed: HealthFeed | None = None
        self.all_down_activations: dict[str, int] = {}
        log_routing(self.engine.snapshot)
        self._count_all_down(None, self.engine.snapshot)

    def apply_health(self, health: HealthSnapshot) -> None:
        old = self.engine.snapshot
        new = replace(old, health=health, plans=build_plans(old.config, health), generation=old.generation + 1)
        self.engine.swap(new)
        log_routing(new, old)
        self._count_all_down(old, new)

    def _count_all_down(self, old: Snapshot | None, new: Snapshot) -> None:
        for index, plan in enumerate(new.plans):
            was = old is not None and index < len(old.plans) and old.plans[index].all_down
            if plan.all_down and not was:
                self.all_down_activations[plan.registry.name] = self.all_down_activations.get(plan.registry.name, 0) + 1


async def start_admin(dnsd: Dnsd, config: Config):
    from aiohttp import web

    from dnsd import admin
    settings = config.admin
    try:
        token = admin.load_token(settings)
    except (OSError, ValueError) as err:
        raise OSError(f"admin API: cannot read the token: {err}") from None
    runner = web.AppRunner(admin.make_app(dnsd, settings, token), access_log=None)
    await runner.setup()
    host, port = settings.listen
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as err:
        await runner.cleanup()
        raise OSError(err.errno, f"cannot listen on {host}:{port} (admin http): {err.strerror}") from None
    log.info("admin_listening", address=f"{host}:{port}", token="configured" if token else
             "none: reads open, changes refused")
    return runner


async def serve(config: Config, listen: list[tuple[str, int]] | None = None) -> None:
    stop = StopSignals()
    dnsd = Dnsd(config)
    feed_task = None
    if config.health.feeds:
        known = {(reg.name, rep.name) for reg in config.registries for rep in reg.replicas}
        dnsd.feed = feed = HealthFeed(config.health, known, dnsd.apply_health)
        feed.load_state()
        feed.refresh()  # apply what was persisted before the first query is answered
        feed_task = asyncio.create_task(feed.run(), name="health feed")
    admin_runner = await start_admin(dnsd, config) if config.admin.listen else None
    settings = ListenerSettings(tcp_idle_timeout=config.server.tcp_idle_timeout,
                                tcp_max_connections=config.server.tcp_max_connections)
    server = DnsServer(dnsd.engine.handle, listen or list(config.server.listen), settings)
    try:
        await server.start()
    except BaseException:
        if feed_task:
            feed_task.cancel()
        if admin_runner:
            await admin_runner.cleanup()
        raise
    log.info("dnsd_started", config=config.source, version=config.digest[:12], zone=config.zone.name,
             registries=len(config.registries), views=len(config.views), health_feeds=list(config.health.feeds),
             listen=[f"{host}:{port}" for host, port in server.addresses])
    try:
        await stop.wait()
    finally:
        stop.close()
        log.info("dnsd_stopping")
        if feed_task:
            feed_task.cancel()
            await asyncio.gather(feed_task, return_exceptions=True)
        if admin_runner:
            await admin_runner.cleanup()
        await server.stop()
