"""`dnsd serve`: load the config, build the first snapshot, run the listeners until SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import signal

import structlog

from dnsd.config import load_config
from dnsd.model import Config
from dnsd.runtime import QueryEngine, Snapshot, new_snapshot
from dnsd.server import DnsServer, ListenerSettings

log = structlog.get_logger(__name__)


def describe_routing(snapshot: Snapshot) -> None:
    """One event per registry saying where its global name goes and why."""
    for plan in snapshot.plans:
        replicas = plan.registry.replicas
        log.info("routing", registry=plan.registry.name, method=plan.registry.routing,
                 serving=[replicas[i].name for i in plan.serving], all_down=plan.all_down, reason=plan.reason)


async def serve(config: Config, listen: list[tuple[str, int]] | None = None) -> None:
    snapshot = new_snapshot(config)
    engine = QueryEngine(snapshot)
    settings = ListenerSettings(tcp_idle_timeout=config.server.tcp_idle_timeout,
                                tcp_max_connections=config.server.tcp_max_connections)
    server = DnsServer(engine.handle, listen or list(config.server.listen), settings)
    await server.start()
    log.info("dnsd_started", config=config.source, version=config.digest[:12], zone=config.zone.name,
             registries=len(config.registries), views=len(config.views),
             listen=[f"{host}:{port}" for host, port in server.addresses])
    describe_routing(snapshot)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("dnsd_stopping")
        await server.stop()


def load(path: str) -> Config:
    return load_config(path)
