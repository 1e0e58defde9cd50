"""The running dnsd's state: owns the serving snapshot and every change to it (health, overrides,
reload), and the forwarder of names outside the zone (built from the config, swapped by reload,
flushed on request), logging what routing changed and why. No sockets, no HTTP: dnsd.app wires
listeners, health feed and admin API around it, and dnsd.ops.admin maps the refusals below to HTTP
statuses."""
from __future__ import annotations

import asyncio
import collections
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Callable

import structlog

from dnsd.serving import offloop
from dnsd.config import ConfigError, carry_serial, load_config
from dnsd.config.upstreams import is_own
from dnsd.forward import Forwarder
from dnsd.routing.health import HealthSnapshot
from dnsd.model import Config
from dnsd.cluster.etcd import EtcdRefused, EtcdUnavailable
from dnsd.routing.overrides import DRAIN, FORCE_DOWN, KINDS, Override, OverrideBackend, OverrideStore
from dnsd.routing.policy import RoutingPlan, plan as make_plan
from dnsd.protocol.rrl import ResponseRateLimiter
from dnsd.routing.geoip import GeoIPError, GeoTable, file_identity
from dnsd.serving.reloaddiff import describe_changes, forwarding_changed, needs_restart
from dnsd.serving.runtime import QueryEngine, Snapshot, build_plans, new_snapshot, replan
from dnsd.serving.workerstats import Totals, WorkerCounters, WorkerReport, combined, live_totals

if TYPE_CHECKING:
    from dnsd.cluster.members import MemberFollower
    from dnsd.cluster.overrides import SharedOverrides
    from dnsd.routing.feed import HealthFeed
    from dnsd.protocol.tcp import TcpStats

log = structlog.get_logger(__name__)

TIMELINE_LENGTH = 200


class Refused(Exception):
    """A change the running dnsd refuses; the message says why and what to do instead."""


class InvalidChange(Refused):
    """The request itself is wrong: an unknown override kind, a duration that is not positive."""


class UnknownReplica(Refused):
    """The running config has no such registry/replica."""


class NoSuchOverride(Refused):
    """The replica has no override (of the kind asked) to remove."""


class WouldLeaveNoReplica(Refused):
    """Draining or forcing down the last serving replica of a registry, without force."""


class ClusterUnavailable(Refused):
    """The cluster's etcd cannot take a change now (unreachable, no quorum): nothing changed anywhere."""


class NotForwarding(Refused):
    """A forwarding operation (flush) while the config has no forward section."""


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    version: str  # the config version serving after the attempt
    problems: tuple[str, ...] = ()
    changes: tuple[str, ...] = ()
    needs_restart: tuple[str, ...] = ()


def serving_names(plan: RoutingPlan) -> list[str]:
    return [plan.registry.replicas[i].name for i in plan.serving]


class Dnsd:
    """The running server's state and its changes. Every change builds a new Snapshot and swaps it in
    with one assignment; the query path never sees a half-applied change."""

    def __init__(self, config: Config, overrides: OverrideStore | None = None, clock=time.time,
                 after_reload: Callable[[], None] | None = None, listen: Sequence[tuple[str, int]] | None = None,
                 flush_file: str | None = None):
        self.clock = clock
        self.overrides = overrides or OverrideStore(config.admin.state_file,
                                                    _audit_path(config.admin.state_file), clock)
        self.overrides.load()
        self.overrides.prune(replica_keys(config))
        self.backend: OverrideBackend = self.overrides  # where changes are kept: these files, or etcd
        self.cluster: SharedOverrides | None = None  # the cluster's overrides (attach_cluster)
        self.members: MemberFollower | None = None  # every dnsd of the cluster, for status (app wires it)
        # where we answer (--listen may differ from server.listen): never an upstream of our own
        self.listen = tuple(listen) if listen else config.server.listen
        self.retired_forwarders: list[Forwarder] = []  # replaced by a reload, lookups still under way
        # workers: flushes worker 0 took, for the others to follow (one JSON line each)
        self.flush_file = flush_file
        self._flushes_seen = _file_size(flush_file)
        self.engine = QueryEngine(new_snapshot(config, overrides=self.overrides.current()),
                                  self._new_forwarder(config))
        self.feed: HealthFeed | None = None
        self.all_down_activations: dict[str, int] = {}
        self.reloads = {"ok": 0, "failed": 0}
        self.timeline: collections.deque[dict] = collections.deque(maxlen=TIMELINE_LENGTH)
        self._lock = asyncio.Lock()
        self._freeing: set[asyncio.Task] = set()  # slice-wise frees of what swaps left behind (_free_later)
        self._after_reload = after_reload  # worker 0: tell the supervisor to reload the other workers
        self._tcp_stats: Callable[[], TcpStats] | None = None  # the listeners' TCP admission (attach_listeners)
        self._tcp_limit = 0  # the TCP connection cap in force (after sizing to the fd limit)
        rate_limit = config.server.rate_limit
        self.rrl = ResponseRateLimiter(rate_limit) if rate_limit is not None else None  # UDP listeners' RRL
        self.worker_counters: WorkerCounters | None = None  # under --workers: the counters shared between them
        self._geoip_seen: tuple | None = None  # the GeoIP file's identity at the last look (geoip_changed)
        self._geoip_tried: tuple | None = None  # ...and the last one a reload was started for
        geo = self.engine.snapshot.compiled.geo
        if geo is not None:
            self._geoip_seen = geo.identity
            log.info("geoip_loaded", database=geo.path, **geo_fields(geo))
        self.log_routing(self.engine.snapshot, None)

    @property
    def snapshot(self) -> Snapshot:
        return self.engine.snapshot

    @property
    def forwarder(self) -> Forwarder | None:
        """The forwarder of names outside the zone; None while the config has no forward section."""
        return self.engine.forwarder

    # -- what the wiring attaches ------------------------------------------------------------------

    def attach_feed(self, feed: HealthFeed) -> None:
        """The health feed whose verdicts reach apply_health (its state shows in status and metrics)."""
        self.feed = feed

    def attach_cluster(self, shared: SharedOverrides) -> None:
        """Keep override changes in the cluster's etcd (the local store becomes its mirror)."""
        self.cluster = shared
        self.backend = shared

    def attach_listeners(self, tcp_stats: Callable[[], TcpStats], tcp_limit: int) -> None:
        """The DNS listeners' TCP admission counters, and the connection cap they enforce."""
        self._tcp_stats = tcp_stats
        self._tcp_limit = tcp_limit

    def tcp_admission(self) -> tuple[TcpStats, int] | None:
        """(the listeners' TCP counters now, their connection cap), or None before listeners attach."""
        return None if self._tcp_stats is None else (self._tcp_stats(), self._tcp_limit)

    # -- swapping --------------------------------------------------------------------------------

    def live_totals(self) -> Totals:
        """This process's query counters now (copied: for scrapes and the workers' files)."""
        forwarder = self.forwarder
        admission = self.tcp_admission()
        return live_totals(self.engine.stats, forwarder.stats if forwarder is not None else None,
                           admission[0] if admission is not None else None, self.rrl)

    def worker_reports(self) -> list[WorkerReport]:
        """Each worker's counters (a base and a file under --workers; this process alone without)."""
        if self.worker_counters is None:
            return [WorkerReport(0, os.getpid(), self.live_totals(), 0.0)]
        return self.worker_counters.reports(self.live_totals())

    def query_totals(self) -> Totals:
        """The query counters /metrics and the status page show: every worker's, added up."""
        return combined(self.worker_reports())

    def _swap(self, new: Snapshot, why: str) -> None:
        old, engine = self.engine.snapshot, self.engine
        kept = {id(plan) for plan in new.plans}
        left = [plan.picks for plan in old.plans if plan.picks and id(plan) not in kept]
        left += engine.swap(new)  # the emptied caches
        self._free_later(left)
        self.log_routing(new, old, why)

    def _free_later(self, containers: list) -> None:
        """Free what a swap left behind in slices between queries (offloop.release), not in one stall;
        without a running loop (start-up, tests) it goes with its last reference, now."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(offloop.release(containers))
        self._freeing.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._freeing.discard)

    def log_routing(self, new: Snapshot, old: Snapshot | None, why: str = "start") -> None:
        """One event per registry whose global routing changed (all of them at start): what and why."""
        for _ in self.routing_events(new, old, why):
            pass

    def routing_events(self, new: Snapshot, old: Snapshot | None, why: str) -> Iterator[None]:
        """log_routing one registry per step (a reload logs them in slices between queries)."""
        old_plans = {p.registry.name: p for p in old.plans} if old is not None else {}
        for plan in new.plans:
            name = plan.registry.name
            before = old_plans.get(name)
            yield
            if before is plan:  # kept: its registry's health and overrides did not change
                continue
            if before is not None and (before.serving, before.all_down, before.servfail) == \
                    (plan.serving, plan.all_down, plan.servfail):
                continue
            if plan.all_down and not (before is not None and before.all_down):
                self.all_down_activations[name] = self.all_down_activations.get(name, 0) + 1
            event = "routing" if before is None else "routing_changed"
            fields = dict(registry=name, method=plan.registry.routing, serving=serving_names(plan),
                          all_down=plan.all_down, trigger=why, reason=plan.reason)
            if before is not None:
                fields["serving_before"] = serving_names(before)
            if plan.all_down:
                log.warning(event, all_down_policy=plan.registry.all_down.mode, **fields)
            else:
                log.info(event, **fields)
            self.timeline.append({"at": self.clock(), "event": event, **fields})

    def note(self, event: str, **fields) -> None:
        """Something the status page's timeline should show (overrides, reloads, health expiry)."""
        self.timeline.append({"at": self.clock(), "event": event, **fields})

    # -- health ----------------------------------------------------------------------------------

    def apply_health(self, health: HealthSnapshot) -> None:
        old = self.engine.snapshot
        changed = []
        for (reg, rep), h in health.endpoints.items():
            if old.health.of(reg, rep).status is not h.status:
                changed.append(f"{reg}/{rep}: {h.status.value}")
                self.note("health_changed", registry=reg, replica=rep, status=h.status.value, reason=h.reason)
        new = replace(old, health=health, plans=replan(old, health, old.overrides), generation=old.generation + 1)
        self._swap(new, "health: " + ("; ".join(changed) if changed else "probe details changed"))

    # -- overrides -------------------------------------------------------------------------------

    def set_override(self, registry: str, replica: str, kind: str, duration: float | None, reason: str,
                     actor: str, force: bool = False) -> Override:
        """This machine's change, kept in its own files."""
        override = self._checked_override(registry, replica, kind, duration, reason, actor, force)
        self.overrides.put(override)
        self._override_set(override)
        return override

    async def request_override(self, registry: str, replica: str, kind: str, duration: float | None, reason: str,
                               actor: str, force: bool = False) -> Override:
        """The admin API's change: kept by the backend (the cluster's etcd when there is one, which
        every dnsd follows) before it is applied here; ClusterUnavailable when etcd cannot keep it."""
        override = self._checked_override(registry, replica, kind, duration, reason, actor, force)
        await self._kept(self.backend.publish(override), f"{kind} {registry}/{replica}")
        self._override_set(override)
        return override

    async def request_removal(self, registry: str, replica: str, actor: str, reason: str = "",
                              kind: str | None = None) -> Override:
        """remove_override through the backend (as request_override)."""
        current = self._current_override(registry, replica, kind)
        if not await self._kept(self.backend.withdraw(current, actor, reason), f"undo {registry}/{replica}"):
            raise NoSuchOverride(f"{registry}/{replica}: its {current.kind} was removed elsewhere meanwhile")
        self._override_removed(current, actor)
        return current

    async def read_audit(self, limit: int) -> list[dict]:
        return await self._kept(self.backend.read_audit(limit), "reading the audit log")

    @staticmethod
    async def _kept(write, what: str):
        try:
            return await write
        except (EtcdUnavailable, EtcdRefused) as err:
            raise ClusterUnavailable(f"{what} NOT done: the cluster's etcd cannot take it now ({err}); no dnsd "
                                     "changed. Retry when etcd has quorum again") from None

    def follow_cluster(self, why: str) -> None:
        """The cluster's overrides changed (mirrored into self.overrides): apply them."""
        self._apply_overrides(why)
        self.note("overrides_from_cluster", why=why)

    def _checked_override(self, registry: str, replica: str, kind: str, duration: float | None, reason: str,
                          actor: str, force: bool) -> Override:
        snapshot = self.engine.snapshot
        self._check_replica(snapshot, registry, replica)
        if kind not in KINDS:
            raise InvalidChange(f"unknown override {kind!r} (one of {', '.join(KINDS)})")
        if duration is not None and duration <= 0:
            raise InvalidChange(f"duration must be positive, got {duration:g}s")
        now = self.clock()
        override = Override(registry, replica, kind, reason, actor, now, None if duration is None else now + duration)
        if kind in (DRAIN, FORCE_DOWN) and not force:
            trial = dict(snapshot.overrides)
            trial[(registry, replica)] = override
            index = [r.name for r in snapshot.config.registries].index(registry)
            before = snapshot.plans[index]
            after = make_plan(snapshot.config.registries[index], snapshot.config.topology, snapshot.health,
                              MappingProxyType(trial))
            if after.all_down and not before.all_down:
                raise WouldLeaveNoReplica(f"{replica} is the last serving replica of {registry}: {kind} would leave "
                                      f"the global name with none (all-down policy {before.registry.all_down.mode} "
                                      "would decide); repeat with force to do it anyway")
        return override

    def _override_set(self, override: Override) -> None:
        self._apply_overrides(f"{override.kind} {override.registry}/{override.replica} by {override.actor}: "
                              f"{override.reason or 'no reason given'}")
        self.note("override_set", registry=override.registry, replica=override.replica, kind=override.kind,
                  actor=override.actor, reason=override.reason, expires_at=override.expires_at)

    def remove_override(self, registry: str, replica: str, actor: str, reason: str = "",
                        kind: str | None = None) -> Override:
        current = self._current_override(registry, replica, kind)
        self.overrides.remove(registry, replica, actor, reason)
        self._override_removed(current, actor)
        return current

    def _current_override(self, registry: str, replica: str, kind: str | None) -> Override:
        self._check_replica(self.engine.snapshot, registry, replica)
        current = self.engine.snapshot.overrides.get((registry, replica))
        if current is None or (kind is not None and current.kind != kind):
            what = f"a {kind} override" if kind else "an override"
            raise NoSuchOverride(f"{registry}/{replica} has no {what}"
                                  + (f" (it has {current.kind})" if current else ""))
        return current

    def _override_removed(self, current: Override, actor: str) -> None:
        self._apply_overrides(f"undo {current.kind} {current.registry}/{current.replica} by {actor}")
        self.note("override_removed", registry=current.registry, replica=current.replica, kind=current.kind,
                  actor=actor)

    def expire_overrides(self) -> list[Override]:
        gone = self.overrides.expire()
        if gone:
            for override in gone:
                log.info("override_expired", registry=override.registry, replica=override.replica,
                         kind=override.kind, reason=override.reason)
                self.note("override_expired", registry=override.registry, replica=override.replica,
                          kind=override.kind)
            self._apply_overrides("expired: " + ", ".join(f"{o.kind} {o.registry}/{o.replica}" for o in gone))
        return gone

    def follow_overrides(self) -> bool:
        """A follower worker: apply the overrides worker 0 wrote to the shared file, if it changed."""
        if not self.overrides.reload_if_changed():
            return False
        self._apply_overrides("overrides changed by worker 0")
        return True

    def _apply_overrides(self, why: str) -> None:
        old = self.engine.snapshot
        overrides = self.overrides.current()
        new = replace(old, overrides=overrides, plans=replan(old, old.health, overrides),
                      generation=old.generation + 1)
        self._swap(new, why)

    @staticmethod
    def _check_replica(snapshot: Snapshot, registry: str, replica: str) -> None:
        try:
            snapshot.config.registry(registry).replica(replica)
        except KeyError:
            raise UnknownReplica(f"no replica {registry}/{replica} in the running config") from None

    # -- forwarding ------------------------------------------------------------------------------

    def _new_forwarder(self, config: Config) -> Forwarder | None:
        settings = config.forward
        if settings is None:
            return None
        # the config left out server.listen; --listen may name other addresses of ours
        own = [address for address in settings.upstreams if is_own(*address, self.listen)]
        if own:
            settings = replace(settings, upstreams=tuple(a for a in settings.upstreams if a not in own))
            log.warning("forward_upstreams_skipped", upstreams=[f"{h}:{p}" for h, p in own],
                        reason="dnsd listens there itself: forwarding to it would loop")
        if not settings.upstreams:
            log.error("forward_no_upstreams", effect="every name outside the zone gets SERVFAIL")
        return Forwarder(settings, self._in_zone, edns_udp_size=config.server.edns_udp_size)

    def _in_zone(self, name_key: bytes) -> bool:
        """For the forwarder: whether a name is ours, in the zone serving now (a reload may move it)."""
        return self.engine.snapshot.compiled.in_zone(name_key)

    def flush_forwarded(self, name: str | None, actor: str) -> int:
        """Forget the forwarding cache's answers for a name (all its types), or everything (None);
        -> how many entries went. Other workers follow through flush_file."""
        forwarder = self.engine.forwarder
        if forwarder is None:
            raise NotForwarding("forwarding is off (the config has no forward section): nothing is cached")
        try:
            count = forwarder.flush(name) if name is not None else forwarder.flush_all()
        except ValueError as err:
            raise InvalidChange(f"bad name {name!r}: {err}") from None
        if self.flush_file:
            with open(self.flush_file, "a") as handle:
                handle.write(json.dumps({"name": name}) + "\n")
            self._flushes_seen = _file_size(self.flush_file)
        self.overrides.audit("flush", actor, {"name": name if name is not None else "(all)", "entries": count})
        self.note("forward_flushed", name=name if name is not None else "(all)", entries=count, actor=actor)
        return count

    def follow_flushes(self) -> int:
        """A follower worker: apply the flushes worker 0 appended to flush_file since the last call."""
        if not self.flush_file or _file_size(self.flush_file) <= self._flushes_seen:
            return 0
        with open(self.flush_file, "rb") as handle:
            handle.seek(self._flushes_seen)
            *complete, _being_written = handle.read().split(b"\n")  # a partial line waits for the next call
        self._flushes_seen += sum(len(line) + 1 for line in complete)
        forwarder = self.engine.forwarder
        for line in complete:
            try:
                name = json.loads(line)["name"]
            except (ValueError, KeyError, TypeError):
                log.warning("forward_flush_unreadable", file=self.flush_file, line=line[:200].decode(errors="replace"))
                continue
            if forwarder is None:
                continue
            if name is None:
                forwarder.flush_all()
            else:
                forwarder.flush(name)
        return len(complete)

    def forward_housekeeping(self) -> None:
        """Each second: the forwarder's (expired entries, log summaries); forget replaced forwarders
        once their last lookup has ended."""
        forwarder = self.engine.forwarder
        if forwarder is not None:
            forwarder.housekeeping()
        self.retired_forwarders = [old for old in self.retired_forwarders if old.in_flight]

    async def close_forwarders(self) -> None:
        """At stop: end the lookups under way (their clients get SERVFAIL), flush the log summaries."""
        forwarders = [f for f in (self.engine.forwarder, *self.retired_forwarders) if f is not None]
        self.retired_forwarders = []
        for forwarder in forwarders:
            await forwarder.close()
            forwarder.housekeeping(force=True)

    # -- reload ----------------------------------------------------------------------------------

    async def reload(self, path: str | None = None, actor: str = "geotm", by_signal: bool = False) -> ReloadResult:
        """Parse and validate fully, compile off the event loop, then swap; on any error keep serving
        the old config and report every problem."""
        async with self._lock:
            old = self.engine.snapshot
            source = path or old.config.source
            with offloop.heavy_work():
                try:
                    config = await offloop.in_thread(load_config, source, self.clock())
                except (ConfigError, OSError) as err:
                    problems = tuple(str(p) for p in err.problems) if isinstance(err, ConfigError) else (str(err),)
                    return self._reload_failed(source, actor, old, problems)
                config = carry_serial(old.config, config)  # an unchanged file keeps its auto serial: no change
                known = replica_keys(config)
                self.overrides.prune(known)
                overrides = self.overrides.current()
                health = _kept_health(old.health, known)
                old_geo = old.compiled.geo
                try:
                    new, changes, restart = await offloop.in_thread(lambda: (
                        new_snapshot(config, health, old.generation + 1, overrides=overrides,
                                     geo=old_geo if old_geo is not None and old_geo.reusable_for(config.topology)
                                     else None),  # an unchanged database is not compiled again
                        tuple(describe_changes(old.config, config)), tuple(needs_restart(old.config, config))))
                except GeoIPError as err:  # the old snapshot, with its database, keeps serving
                    return self._reload_failed(source, actor, old, (str(err),))
                new_geo = new.compiled.geo
                if new_geo is not None and new_geo is not old_geo:
                    changes = tuple(c for c in changes if c != "identical") + (
                        f"geoip database {new_geo.path} loaded: {new_geo.stats.describe()}",)
                    log.info("geoip_loaded", database=new_geo.path, **geo_fields(new_geo))
                # health or overrides that changed while it compiled: new plans for them (tables stay)
                if self.engine.snapshot.health is not old.health or self.overrides.current() != overrides:
                    health, overrides = _kept_health(self.engine.snapshot.health, known), self.overrides.current()
                    plans = await offloop.in_thread(build_plans, config, health, overrides)
                    new = replace(new, health=health, plans=plans, overrides=overrides)
                new = replace(new, generation=self.engine.snapshot.generation + 1)
                if forwarding_changed(old.config, config):
                    # a new forwarder, its cache empty; the old one finishes the lookups under way
                    if self.engine.forwarder is not None:
                        self.retired_forwarders.append(self.engine.forwarder)
                    self.engine.swap_forwarder(self._new_forwarder(config))
                self.engine.swap(new)
                offloop.keep_built()
            await offloop.run_sliced(self.routing_events(new, old, f"config reload by {actor}"))
            old_config, old_compiled, old = old.config, old.compiled, None
            if sys.getrefcount(old_compiled) <= 2:  # nobody else holds the old tables: free them in slices
                zd = old_compiled.zd
                await offloop.release([*old_compiled.exact, *old_compiled.other, zd.public, *zd.overrides])
                del zd
            del old_compiled
            self.reloads["ok"] += 1
            log.info("config_reloaded", source=source, actor=actor, version_before=old_config.digest[:12],
                     version=config.digest[:12], changes=list(changes), needs_restart=list(restart))
            self.note("config_reloaded", version=config.digest[:12], changes=list(changes))
            self.overrides.audit("reload", actor, {"source": source, "version": config.digest[:12]})
            if self._after_reload is not None and not by_signal:
                self._after_reload()
            return ReloadResult(True, config.digest[:12], (), changes, restart)

    def _reload_failed(self, source: str, actor: str, old: Snapshot, problems: tuple[str, ...]) -> ReloadResult:
        self.reloads["failed"] += 1
        log.error("config_reload_failed", source=source, actor=actor, problems=list(problems),
                  keeping=old.config.digest[:12])
        self.note("config_reload_failed", source=source, problems=len(problems))
        self.overrides.audit("reload_failed", actor, {"source": source, "problems": len(problems)})
        return ReloadResult(False, old.config.digest[:12], problems)

    def geoip_changed(self) -> bool:
        """True once the GeoIP database file has changed on disk (or gone) since it was compiled, and
        looked the same at the previous call (a copy in progress is left to finish): app.watch_geoip
        then reloads. A file that failed once is not tried again until it changes again."""
        geo = self.engine.snapshot.compiled.geo
        if geo is None:
            return False
        now = file_identity(geo.path)
        seen, self._geoip_seen = self._geoip_seen, now
        if now == geo.identity or now != seen or now == self._geoip_tried:
            return False
        self._geoip_tried = now
        return True


def geo_fields(geo: GeoTable) -> dict:
    """A compiled GeoIP table's figures, for log events."""
    stats = geo.stats
    return dict(database_type=stats.database_type, networks=stats.networks, records=stats.records,
                ranges=stats.ranges_v4 + stats.ranges_v6, table_mib=round(stats.table_bytes / 2**20, 1),
                compile_seconds=round(stats.compile_seconds, 2))


def _file_size(path: str | None) -> int:
    try:
        return os.path.getsize(path) if path else 0
    except OSError:
        return 0


def _kept_health(health: HealthSnapshot, known: set[tuple[str, str]]) -> HealthSnapshot:
    """The health of the replicas a new config still has."""
    return HealthSnapshot(health.generation, MappingProxyType(
        {key: h for key, h in health.endpoints.items() if key in known}))


def _audit_path(state_file: str | None) -> str | None:
    return f"{state_file}.audit.jsonl" if state_file else None


def replica_keys(config: Config) -> set[tuple[str, str]]:
    """Every (registry, replica) name pair of the config."""
    return {(reg.name, rep.name) for reg in config.registries for rep in reg.replicas}
