"""Wires one dnsd process together (as aiohttp's runner does an app): the Dnsd state (with the
forwarder of names outside the zone, when the config has a forward section), the DNS listeners sized
to the open-files limit, the health feed, the admin API, housekeeping and the signals (SIGTERM/SIGINT
stop, SIGHUP reloads); started in order, stopped in reverse."""
from __future__ import annotations

import asyncio
import functools
import os
import signal
import socket
import time
from dataclasses import dataclass

import structlog
from aiohttp import web

from dnsd.cluster.etcd import client_for
from dnsd.cluster.follow import PrefixFollower
from dnsd.cluster.members import MemberFollower, MemberPublisher
from dnsd.cluster.overrides import SharedOverrides
from dnsd.cluster.verdicts import VerdictFollower
from dnsd.common.secretfile import SecretUnreadable
from dnsd.ops import admin
from dnsd.serving import offloop
from dnsd.ops.admintoken import UnusableToken, load_token
from dnsd.protocol.fdlimit import open_descriptors, raise_open_files_limit, tcp_connection_budget
from dnsd.routing.feed import HealthFeed
from dnsd.common.lifecycle import StopSignals, TaskSet, serve_http
from dnsd.model import Config, ServerSettings
from dnsd.protocol.listening import ListenerSettings
from dnsd.protocol.server import DnsServer
from dnsd.serving.service import Dnsd, replica_keys
from dnsd.serving.stats import SHARE_SAMPLE
from dnsd.serving.workerstats import WorkerCounters

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """This process is one of `dnsd serve --workers N`."""

    index: int
    state_dir: str | None

    @property
    def follower(self) -> bool:
        return self.index > 0


async def start_admin(dnsd: Dnsd, config: Config) -> web.AppRunner:
    settings = config.admin
    try:
        token: str | UnusableToken | None = load_token(settings)
    except (OSError, ValueError) as err:
        # never take DNS down over an admin file: serve DNS, refuse every non-public admin call
        log.error("admin_token_unreadable", error=str(err), effect="admin API refuses all but public calls")
        token = UnusableToken(str(err))
    host, port = settings.listen
    runner = await serve_http(admin.make_app(dnsd, settings, token), [(host, port)], "admin http")
    log.info("admin_listening", address=f"{host}:{port}",
             token="unusable" if isinstance(token, UnusableToken) else
             "configured" if token else "none: reads open, changes refused")
    return runner


async def housekeeping(dnsd: Dnsd, worker: WorkerRole | None = None, period: float = 1.0) -> None:
    """Expire overrides (each second), follow worker 0's override file and forwarding-cache flushes
    (followers), the forwarder's own (expired entries, log summaries), publish this worker's counters
    for worker 0 (each second, under --workers), and sample answer counts for the recent shares
    (every 10 s; worker 0 samples every worker's)."""
    last_sample = 0.0
    while True:
        if worker is not None and worker.follower:
            dnsd.follow_overrides()
            dnsd.follow_flushes()
        else:
            dnsd.expire_overrides()
        dnsd.forward_housekeeping()
        publish_counters(dnsd)
        now = time.monotonic()
        if now - last_sample >= SHARE_SAMPLE:
            every_worker = dnsd.worker_counters is not None and not dnsd.worker_counters.index
            dnsd.engine.stats.sample(now, dnsd.query_totals().counts if every_worker else None)
            last_sample = now
        dnsd.engine.flush_logs()  # summaries of rate-limited per-query events, also after a flood ends
        await asyncio.sleep(period)


def publish_counters(dnsd: Dnsd) -> None:
    """Under --workers: write this worker's counters where worker 0 adds them up (and where a restarted
    worker finds its predecessor's). A failed write is retried each second, logged once per streak."""
    counters = dnsd.worker_counters
    if counters is None:
        return
    try:
        counters.publish(dnsd.live_totals())
        counters.failing = False
    except OSError as err:
        if not counters.failing:
            log.warning("worker_counters_unwritten", file=counters.path, error=str(err),
                        effect="worker 0's totals lag this worker's until a write succeeds")
        counters.failing = True


def instance_name(listen: list[tuple[str, int]]) -> str:
    """How this dnsd is known in the cluster: host name and first DNS address (unique per machine)."""
    host, port = listen[0]
    return f"{socket.gethostname()}/{host}:{port}"


def join_cluster(dnsd: Dnsd, config: Config, listen: list[tuple[str, int]]) -> SharedOverrides | None:
    """With a cluster section: override changes kept in etcd and followed from it (worker 0 only;
    the other workers follow its state file as without a cluster)."""
    if config.cluster is None:
        return None
    settings = config.cluster.etcd
    try:
        client = client_for(settings)
    except SecretUnreadable as err:
        # as with the admin token: DNS serves from the local state; override changes are refused
        log.error("cluster_unusable", error=str(err), effect="serving local overrides; changes refused")
        return None
    shared = SharedOverrides(client, settings.prefix, dnsd.overrides, instance_name(listen), dnsd.follow_cluster)
    dnsd.attach_cluster(shared)
    log.info("cluster_joining", endpoints=list(settings.endpoints), prefix=settings.prefix, instance=shared.instance)
    return shared


def registration(dnsd: Dnsd, followers: list[PrefixFollower], dns: list[tuple[str, int]],
                 admin_address: tuple[str, int] | None) -> dict:
    """What this dnsd says about itself in the cluster (dnsd.cluster.members)."""
    shared = dnsd.cluster
    assert shared is not None
    syncs = [follower.last_sync for follower in followers]
    return {"instance": shared.instance, "dns": [f"{host}:{port}" for host, port in dns],
            "admin": f"{admin_address[0]}:{admin_address[1]}" if admin_address else None,
            "config": dnsd.snapshot.config.digest, "config_source": dnsd.snapshot.config.source,
            "health_generation": dnsd.feed.generation if dnsd.feed is not None else None,
            "overrides_revision": shared.revision, "overrides_changed": shared.changed_revision,
            "last_sync": None if None in syncs else min(syncs),  # type: ignore[type-var]
            "connected": all(follower.connected for follower in followers), "pid": os.getpid()}
async def watch_geoip(dnsd: Dnsd, period: float = 1.0) -> None:
    """Reload when the GeoIP database file has changed: compiled off the loop like any reload, the old
    database serving until then (and on, if the new file is broken). Every worker watches it itself."""
    while True:
        if dnsd.geoip_changed():
            await dnsd.reload(actor="geoip database change", by_signal=True)
        await asyncio.sleep(period)


def listener_settings(server: ServerSettings, reuse_port: bool) -> ListenerSettings:
    """The DNS listeners' settings. Raises the soft open-files limit to the hard one first and lowers
    tcp_max_connections when the descriptors left after server.fd_reserve cannot hold it, so DNS
    clients can never take the descriptors the health feed, admin API and state files need."""
    limit = raise_open_files_limit()
    in_use = open_descriptors()
    budget = tcp_connection_budget(server.tcp_max_connections, limit.soft, in_use, server.fd_reserve)
    log.info("open_files_limit", soft_before=limit.soft_before, soft=limit.soft, hard=limit.hard,
             in_use=in_use, reserve=server.fd_reserve, tcp_max_connections=budget.limit,
             tcp_max_connections_per_source=min(server.tcp_max_connections_per_source, budget.limit))
    if limit.error:
        log.warning("open_files_limit_not_raised", soft=limit.soft, hard=limit.hard, error=limit.error)
    if budget.reduced:
        log.warning("tcp_max_connections_reduced", configured=server.tcp_max_connections, using=budget.limit,
                    soft_limit=limit.soft, in_use=in_use, reserve=server.fd_reserve,
                    reserve_kept=budget.reserve_kept,
                    fix="raise the hard open-files limit (ulimit -Hn, systemd LimitNOFILE=, docker --ulimit "
                        "nofile=) or lower server.tcp_max_connections")
    return ListenerSettings(
        tcp_idle_timeout=server.tcp_idle_timeout,
        tcp_idle_timeout_under_load=min(server.tcp_idle_timeout_under_load, server.tcp_idle_timeout),
        tcp_max_connections=budget.limit,
        tcp_max_connections_per_source=server.tcp_max_connections_per_source,
        tcp_source_prefix_v4=server.tcp_source_prefix_v4,
        tcp_source_prefix_v6=server.tcp_source_prefix_v6,
        reuse_port=reuse_port,
    )


def _tell_supervisor_to_reload() -> None:
    # a reload through worker 0's admin API reaches the other workers through the supervisor
    os.kill(os.getppid(), signal.SIGUSR1)


async def serve(config: Config, listen: list[tuple[str, int]] | None = None, worker: WorkerRole | None = None) -> None:
    stop = StopSignals()
    listen = listen or list(config.server.listen)
    flush_file = f"{worker.state_dir}/forward-flushes.jsonl" if worker is not None and worker.state_dir else None
    dnsd = Dnsd(config, after_reload=_tell_supervisor_to_reload if worker is not None and worker.index == 0 else None,
                listen=listen, flush_file=flush_file)
    offloop.keep_built()  # the serving tables: no GC pass walks them again
    if worker is not None:
        structlog.contextvars.bind_contextvars(worker=worker.index)
        if worker.state_dir:
            dnsd.worker_counters = WorkerCounters(worker.state_dir, worker.index)
    tasks = TaskSet()
    tasks.start(housekeeping(dnsd, worker), name="housekeeping")
    tasks.start(watch_geoip(dnsd), name="geoip watch")
    if config.health.feeds or config.cluster is not None:  # a cluster's probes publish through etcd
        feed = HealthFeed(config.health, replica_keys(config), dnsd.apply_health)
        dnsd.attach_feed(feed)
        feed.load_state()
        feed.refresh()  # apply what was persisted before the first query is answered
        tasks.start(feed.run(), name="health feed")
    cluster = join_cluster(dnsd, config, listen) if worker is None or not worker.follower else None
    if cluster is not None:
        tasks.start(cluster.run(), name="cluster overrides")
        followers: list[PrefixFollower] = [cluster]
        if dnsd.feed is not None:
            verdicts = VerdictFollower(cluster.client, cluster.prefix, dnsd.feed)
            tasks.start(verdicts.run(), name="cluster verdicts")
            followers.append(verdicts)
        assert config.cluster is not None
        document = functools.partial(registration, dnsd, followers, listen, config.admin.listen)
        member_ttl = config.cluster.member_ttl
        dnsd.members = MemberFollower(cluster.client, cluster.prefix, document, member_ttl)
        tasks.start(dnsd.members.run(), name="cluster instances")
        registered = MemberPublisher(cluster.client, cluster.prefix, cluster.instance, member_ttl, document)
        tasks.start(registered.run(), name="cluster registration")
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, lambda: tasks.start(dnsd.reload(actor="SIGHUP", by_signal=True),
                                                               name="SIGHUP reload"))
    admin_runner = None
    settings = listener_settings(config.server, reuse_port=worker is not None)
    server = DnsServer(dnsd.engine.handle, listen, settings, rate_limiter=dnsd.rrl, packet_cache=dnsd.engine)
    dnsd.attach_listeners(server.tcp_stats, settings.tcp_max_connections)
    try:
        admin_runner = await start_admin(dnsd, config) if config.admin.listen else None
        await server.start()
        log.info("dnsd_started", config=config.source, version=config.digest[:12], zone=config.zone.name,
                 registries=len(config.registries), views=len(config.views),
                 health_feeds=list(config.health.feeds), listen=[f"{h}:{p}" for h, p in server.addresses],
                 rate_limit=config.server.rate_limit.responses_per_second if config.server.rate_limit else "off",
                 forward=[up.address for up in dnsd.forwarder.upstreams.all] if dnsd.forwarder else "off")
        await stop.wait()
    finally:
        stop.close()
        loop.remove_signal_handler(signal.SIGHUP)
        log.info("dnsd_stopping")
        await tasks.close()  # housekeeping, the health feed and any reload still running
        dnsd.engine.flush_logs(force=True)  # no suppressed count is lost at shutdown
        if admin_runner:
            await admin_runner.cleanup()
        await server.stop()
        publish_counters(dnsd)  # the last answers' counts too
        await dnsd.close_forwarders()  # after the listeners: no new lookups start
        if cluster is not None:
            await registered.withdraw()  # a clean stop leaves the list now, not at the lease's end
            await cluster.client.close()
