"""The drill scenarios. Each one starts from normal (all replicas online, the global name on eastus,
pulls served by eastus), injects one fault into a real replica, and returns a Timeline: what
happened when, the measured failover/recovery times against the budget from the config, and every
pull that failed when it should not have.

Which pulls may fail: only those in flight between the fault and the moment dnsd's answer moved
(the detection window: the global name still points at the broken replica, and no DNS-based
traffic manager can do better). Every other pull of the global name must succeed, and the drill
fails if one does not.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from drills.client import Pull
from drills.faults import Faults
from drills.lab import Lab
from drills.labconfig import GLOBAL_NAME, PROBES, REPLICA
from drills.observe import Event, probe_statuses, wait_for
from drills.pulls import Puller
from drills.timeline import Timeline

VICTIM = "eastus"        # the replica nearest the drill's client
NEXT = "westeurope"      # where performance routing sends eastus clients when eastus is out
SETTLE = 15.0            # seconds given, beyond a budget, before "not seen" is declared


@dataclass(frozen=True, slots=True)
class Fault:
    label: str
    inject: Callable[[Faults], str]
    restore: Callable[[Faults], str]
    reads_keep_working: bool = False  # every pull must succeed, even in the detection window


def baseline(lab: Lab, limit: float = 90.0) -> str | None:
    """Back to normal before a scenario: every replica serving and online, the global name on
    eastus, a pull served by eastus. Returns what is still wrong, or None."""
    lab.faults.mend_all()
    ok = wait_for(lambda: all(set(probe_statuses(p).values()) == {"online"} for p in lab.faults.probes_instances())
                  and lab.client.dns_replica() == VICTIM, limit, 0.25)
    if ok is None:
        return f"not back to normal within {limit:.0f}s: probes {probe_statuses()}, " \
               f"global name -> {lab.client.dns_replica()}"
    pull = lab.client.pull(record=False)
    if not (pull.ok and pull.replica == VICTIM):
        return f"baseline pull failed: {pull.error or pull.replica}"
    return None


def _start(lab: Lab, title: str) -> tuple[Timeline, bool]:
    """How every scenario starts: back to normal (baseline), then pulls of the global name running for
    a second; the timeline's origin is the moment after, when the fault goes in. False (the reason is
    in the timeline) when normal was not reached."""
    return begin_timeline(lab, title, baseline(lab))


def begin_timeline(lab: Lab, title: str, problem: str | None) -> tuple[Timeline, bool]:
    """A scenario's timeline once the lab was brought back to normal (`problem`: why not, or None):
    pulls of the global name run for a second, then the origin is set. Shared with the cluster drill."""
    tl = Timeline(title, origin=time.time())
    if problem:
        tl.problem(f"no clean start: {problem}")
        return tl, False
    lab.client.pulling(True)
    time.sleep(1.0)
    tl.origin = time.time()
    return tl, True


def _finish(lab: Lab, tl: Timeline, start: float) -> float:
    """How a scenario ends: pulls run one more second and stop, and what was observed since `start`
    goes on the timeline. Returns the end."""
    end = time.time() + 1.0
    time.sleep(1.0)
    lab.client.pulling(False)
    _add_observed(tl, lab, start, end)
    return end


def _storage_outage(lab: Lab, tl: Timeline, moved: str = "first DNS answer changed") -> float | None:
    """eastus's storage made unreadable at the timeline's origin; returns when the global name moved
    away (None: not within the failover budget and SETTLE), measured against the budget."""
    budget = lab.budget[VICTIM]
    t_fault = tl.origin
    tl.mark(t_fault, "fault injected: eastus storage unreadable", lab.faults.storage_unreadable(VICTIM))
    t_dns = _wait_dns(lab, t_fault, budget.failover + SETTLE, away_from=VICTIM)
    tl.mark(t_dns, moved)
    tl.measure("failover: DNS answer moved", t_fault, t_dns, budget.detect_down + budget.feed, "detect down + feed")
    return t_dns


def _is(source: str, kind: str, **fields) -> Callable[[Event], bool]:
    def match(event: Event) -> bool:
        return event.source == source and event.kind == kind and all(event.fields.get(k) == v
                                                                      for k, v in fields.items())
    return match


def _verdict(replica: str, *, status: str | None = None, trend: str | None = None) -> Callable[[Event], bool]:
    def match(event: Event) -> bool:
        return (event.source == "probes-view" and event.fields.get("replica") == replica
                and (status is None or event.fields.get("status") == status)
                and (trend is None or event.fields.get("trend") == trend))
    return match


def _add_observed(tl: Timeline, lab: Lab, start: float, end: float) -> None:
    """Every status change, routing change, health expiry and DNS answer change in [start, end]."""
    for event in lab.events.select(start, end):
        f = event.fields
        if event.source in PROBES and event.kind == "status_changed":
            tl.mark(event.at, f"{event.source}: {f.get('replica')} {f.get('before')} -> {f.get('after')}",
                    str(f.get("reason", ""))[:110])
        elif event.source == "dnsd" and event.kind == "routing_changed":
            tl.mark(event.at, f"dnsd: routing changed, serving {','.join(f.get('serving') or [])}",
                    str(f.get("trigger", ""))[:90])
        elif event.source == "dnsd" and event.kind == "health_expired":
            tl.mark(event.at, "dnsd: health_expired (verdicts too old: fail open)")
        elif event.source == "dnsd" and event.kind == "audit":
            tl.mark(event.at, f"dnsd audit: {f.get('action')} {f.get('kind')} {f.get('replica')} by {f.get('actor')}",
                    str(f.get("reason", ""))[:80])
        elif event.source == "dns":
            tl.mark(event.at, f"DNS: {GLOBAL_NAME} -> {f.get('address')} ({f.get('replica')})")


def _first_failed_round(lab: Lab, replica: str, after: float) -> float | None:
    event = lab.events.first(after, lambda e: _verdict(replica, trend="suspect")(e)
                             or _verdict(replica, status="degraded")(e))
    return event.at if event else None


def _first_good_round(lab: Lab, replica: str, after: float) -> float | None:
    event = lab.events.first(after, lambda e: _verdict(replica, trend="recovering")(e)
                             or _verdict(replica, status="online")(e))
    return event.at if event else None


def _dns_moved(lab: Lab, after: float, *, away_from: str | None = None, to: str | None = None) -> float | None:
    def match(event: Event) -> bool:
        if event.source != "dns" or event.kind != "answer":
            return False
        replica = event.fields.get("replica")
        return (away_from is None or replica != away_from) and (to is None or replica == to) and replica is not None
    event = lab.events.first(after, match)
    return event.at if event else None


def _wait_dns(lab: Lab, after: float, limit: float, **kwargs) -> float | None:
    found: list[float] = []

    def seen() -> bool:
        at = _dns_moved(lab, after, **kwargs)
        if at is not None:
            found.append(at)
        return at is not None
    wait_for(seen, limit)
    return found[0] if found else None


def _wait_pull(lab: Lab, replica: str, after: float, limit: float, client: Puller | None = None) -> Pull | None:
    client = client or lab.client
    wait_for(lambda: client.first_pull_from(replica, after) is not None, limit)
    return client.first_pull_from(replica, after)


def _judge_pulls(tl: Timeline, client: Puller, start: float, end: float,
                 windows: list[tuple[float, float]], strict: bool = False) -> None:
    """Every pull started in [start, end] must succeed, except (unless strict) those overlapping a
    detection window (fault -> DNS answer moved)."""
    client.settle_pulls()
    pulls = [p for p in client.pulls_between(start, end) if p.ended is not None]
    ok = [p for p in pulls if p.ok]
    excused, bad = [], []
    for p in pulls:
        if p.ok:
            continue
        in_window = any(p.started < w_end and p.ended > w_start for w_start, w_end in windows)
        (excused if in_window and not strict else bad).append(p)
    served = {}
    for p in ok:
        served[p.replica] = served.get(p.replica, 0) + 1
    by = ", ".join(f"{k} {v}" for k, v in sorted(served.items()))
    tl.notes.append(f"{client.name} pulls of {GLOBAL_NAME}: {len(pulls)}, {len(ok)} ok ({by or 'none'}), "
                    f"{len(excused)} failed inside the detection window (expected), {len(bad)} failed outside it")
    for p in bad[:5]:
        tl.problem(f"{client.name} pull started at +{p.started - tl.origin:.2f}s failed: {p.error[:160]}")
    if not pulls:
        tl.problem("no pull ran during the scenario")


def failover(lab: Lab, title: str, fault: Fault, extra: Callable[[Lab, Timeline], None] | None = None) -> Timeline:
    """Inject `fault` into eastus: the global name must move to westeurope within the failover budget,
    pulls must keep succeeding from westeurope; restore: back to eastus within the recovery budget."""
    tl, ready = _start(lab, title)
    if not ready:
        return tl
    budget = lab.budget[VICTIM]
    t_fault = tl.origin
    tl.mark(t_fault, f"fault injected: {fault.label} on {VICTIM}", fault.inject(lab.faults))

    t_dns = _wait_dns(lab, t_fault, budget.failover + SETTLE, away_from=VICTIM)
    new = lab.client.dns_replica() if t_dns else None
    pull_new = _wait_pull(lab, new, t_fault, SETTLE) if new else None
    tl.mark(_first_failed_round(lab, VICTIM, t_fault), "first failed probe round (probes: trend suspect)")
    tl.mark(t_dns, "first DNS answer changed")
    tl.mark(pull_new.ended if pull_new else None, f"first successful pull from the new replica ({new})")
    if new is not None and new != NEXT:
        tl.problem(f"the global name moved to {new}, expected the next nearest, {NEXT}")
    if extra is not None:
        extra(lab, tl)

    t_cleared = time.time()
    tl.mark(t_cleared, f"fault cleared: {fault.restore(lab.faults)}")
    # the recovery clock starts when the replica itself serves again (a restarted process needs a
    # moment, the registry's own storage check up to its interval): geotm's part is what follows
    t_restore = wait_for(lambda: lab.client.replica_healthy(VICTIM), SETTLE, 0.05) or time.time()
    tl.mark(t_restore, "eastus healthy again (direct check: /v2/ and /debug/health 200)")
    t_back = _wait_dns(lab, t_restore, budget.recovery + SETTLE, to=VICTIM)
    pull_back = _wait_pull(lab, VICTIM, t_back, SETTLE) if t_back else None
    tl.mark(_first_good_round(lab, VICTIM, t_cleared), "first good probe round (probes: trend recovering)")
    tl.mark(t_back, "DNS answer back on eastus")
    tl.mark(pull_back.ended if pull_back else None, "first successful pull from eastus again")
    end = _finish(lab, tl, t_fault)

    tl.measure("failover: DNS answer moved", t_fault, t_dns, budget.detect_down + budget.feed,
               "detect down + feed")
    tl.measure("failover: first pull from new", t_fault, pull_new.ended if pull_new else None, budget.failover,
               "detect down + feed + tm TTL")
    tl.measure("recovery: DNS answer back", t_restore, t_back, budget.detect_up + budget.feed, "detect up + feed")
    tl.measure("recovery: first pull from eastus", t_restore, pull_back.ended if pull_back else None,
               budget.recovery, "detect up + feed + tm TTL")
    _judge_pulls(tl, lab.client, t_fault - 1.0, end, [(t_fault, t_dns or end)], strict=fault.reads_keep_working)
    return tl


# -- the scenarios --------------------------------------------------------------------------------

def _regional_still_broken(lab: Lab, tl: Timeline) -> None:
    """By design: the failed replica's regional name keeps pointing at it, and a pull through it fails."""
    regional = REPLICA[VICTIM].regional
    address = lab.client.resolve(regional)
    tl.mark(time.time(), f"{regional} -> {address}", "regional names never fail over")
    if address != REPLICA[VICTIM].address:
        tl.problem(f"{regional} answered {address}, expected {REPLICA[VICTIM].address}")
    pull = lab.client.pull(regional, record=False)
    tl.mark(pull.ended, f"pull through {regional}: {'succeeded' if pull.ok else 'failed, as designed'}",
            pull.error[-100:] if pull.error else "")
    if pull.ok:
        tl.problem(f"a pull through {regional} succeeded while its storage is broken")


def _old_answer_kept(client: Puller, old: str, t_dns: float, first_new: Pull) -> float:
    """How long after dnsd's answer moved the client still used the old one: the start of its last
    pull that went to `old` (served by it, or failed by it) after t_dns, 0 if none. Pulls run
    every `period` seconds, so this is that fine."""
    stale = [p for p in client.pulls_between(t_dns, first_new.started) if p.replica == old or not p.ok]
    return max((p.started - t_dns for p in stale), default=0.0)


def dockerd_pull(lab: Lab) -> Timeline:
    """A real docker daemon as the registry client, beside skopeo: its only resolver is dnsd, it
    trusts the drill CA through certs.d. eastus's storage made unreadable: the daemon's pulls move to
    westeurope within the failover budget, the regional name still reaches eastus (and fails), and
    after the repair they are back on eastus within the recovery budget. How long each client kept
    using the old answer after dnsd's changed (its own caching) is measured against the TTL."""
    title = "dockerd-pull: a docker daemon pulls through geotm; eastus storage unreadable"
    daemon = lab.daemon
    if daemon is None:
        tl = Timeline(title, origin=time.time())
        tl.problem("this lab has no docker daemon to pull with (geotm drill --compose --pull-daemon SOCKET; "
                   "scripts/compose-drill starts one)")
        return tl
    tl, ready = _start(lab, title)
    if not ready:
        return tl
    check = daemon.pull(record=False)
    if not (check.ok and check.replica == VICTIM):
        tl.problem(f"no clean start: the daemon's pull was not served by {VICTIM}: {check.error or check.replica}")
        lab.client.pulling(False)
        return tl
    daemon.pulling(True)
    time.sleep(1.0)
    tl.origin = time.time()
    budget = lab.budget[VICTIM]
    t_fault = tl.origin
    tl.mark(t_fault, "fault injected: eastus storage unreadable", lab.faults.storage_unreadable(VICTIM))
    t_dns = _wait_dns(lab, t_fault, budget.failover + SETTLE, away_from=VICTIM)
    tl.mark(t_dns, "first DNS answer changed")
    new = lab.client.dns_replica() if t_dns else None
    firsts: dict[str, Pull | None] = {}
    for client in (daemon, lab.client):
        first = _wait_pull(lab, new, t_fault, SETTLE, client) if new else None
        firsts[client.name] = first
        tl.mark(first.ended if first else None, f"first {client.name} pull served by the new replica ({new})")
    if new is not None and new != NEXT:
        tl.problem(f"the global name moved to {new}, expected the next nearest, {NEXT}")

    regional = REPLICA[VICTIM].regional
    pull = daemon.pull(regional, record=False)
    tl.mark(pull.ended, f"dockerd pull through {regional}: {'succeeded' if pull.ok else 'failed, as designed'}",
            pull.error[-100:] if pull.error else "")
    if pull.ok:
        tl.problem(f"the daemon pulled through {regional} while its storage is broken")

    t_cleared = time.time()
    tl.mark(t_cleared, f"fault cleared: {lab.faults.storage_readable(VICTIM)}")
    t_restore = wait_for(lambda: lab.client.replica_healthy(VICTIM), SETTLE, 0.05) or time.time()
    tl.mark(t_restore, "eastus healthy again (direct check: /v2/ and /debug/health 200)")
    t_back = _wait_dns(lab, t_restore, budget.recovery + SETTLE, to=VICTIM)
    tl.mark(t_back, "DNS answer back on eastus")
    back = _wait_pull(lab, VICTIM, t_back, SETTLE, daemon) if t_back else None
    tl.mark(back.ended if back else None, "first dockerd pull from eastus again")
    daemon.pulling(False)
    end = _finish(lab, tl, t_fault)

    first = firsts[daemon.name]
    tl.measure("dockerd: first pull from new", t_fault, first.ended if first else None, budget.failover,
               "detect down + feed + tm TTL")
    for client in (daemon, lab.client):
        first_new = firsts[client.name]
        if t_dns is not None and first_new is not None:
            kept = _old_answer_kept(client, VICTIM, t_dns, first_new)
            tl.measure(f"{client.name}: kept the old answer", t_dns, t_dns + kept, budget.client_cache,
                       f"tm TTL; pulls every {client.period:g}s, the first to reach {new} started "
                       f"{first_new.started - t_dns:+.2f}s after the DNS change")
    tl.measure("dockerd: recovery, first pull from eastus", t_restore, back.ended if back else None,
               budget.recovery, "detect up + feed + tm TTL")
    _judge_pulls(tl, lab.client, t_fault - 1.0, end, [(t_fault, t_dns or end)])
    daemon.settle_pulls()
    _judge_pulls(tl, daemon, t_fault - 1.0, end, [(t_fault, t_dns or end)])
    return tl


def storage_failure(lab: Lab) -> Timeline:
    fault = Fault("storage unreadable", lambda f: f.storage_unreadable(VICTIM), lambda f: f.storage_readable(VICTIM))
    return failover(lab, "storage-failure: eastus storage unreadable", fault, _regional_still_broken)


def _writes_fail_reads_work(lab: Lab, tl: Timeline) -> None:
    regional = REPLICA[VICTIM].regional
    pull = lab.client.pull(regional, record=False)
    tl.mark(pull.ended, f"pull through {regional} (disk full): {'ok, reads still work' if pull.ok else 'FAILED'}",
            pull.error[-100:])
    if not pull.ok:
        tl.problem(f"a pull from the full replica failed: {pull.error[:160]}")
    push = lab.client.push(lab.client.layout(NEXT), regional)  # any image; the point is the write
    tl.mark(time.time(), f"push to {regional} (disk full): {'succeeded?!' if push.returncode == 0 else 'failed'}",
            (push.stderr.strip().splitlines() or [""])[-1][-100:])
    if push.returncode == 0:
        tl.problem("a push to the full replica succeeded: the disk was not full")


def disk_full(lab: Lab) -> Timeline:
    fault = Fault("disk full", lambda f: f.fill_disk(VICTIM), lambda f: f.free_disk(VICTIM), reads_keep_working=True)
    return failover(lab, "disk-full: eastus storage full (reads work, pushes fail; the write canary)", fault,
                    _writes_fail_reads_work)


def process_killed(lab: Lab) -> Timeline:
    fault = Fault("registry process killed", lambda f: f.kill_registry(VICTIM), lambda f: f.restart_registry(VICTIM))
    return failover(lab, "process-killed: eastus registry SIGKILL, then restarted", fault)


def process_frozen(lab: Lab) -> Timeline:
    fault = Fault("registry process frozen", lambda f: f.freeze(VICTIM), lambda f: f.thaw(VICTIM))
    return failover(lab, "process-frozen: eastus registry SIGSTOP (hangs), then SIGCONT", fault)


def blip_length(interval: float, timeout: float, fall: int, jitter: float) -> float:
    """A freeze that fails at least one probe round but fewer than `fall` in a row: a round started at
    s in the freeze fails only if still frozen at s + timeout, so the window that fails rounds is
    (length - timeout); it must hold at least one round start (>= interval x (1 + jitter)) and fewer
    than fall - 1 gaps (< (fall - 1) x interval). The middle of that range."""
    low, high = interval * (1 + jitter), (fall - 1) * interval
    if high <= low:  # fall <= 2: no length is sure to both fail a round and stay under fall
        return timeout + 0.5 * interval
    return timeout + (low + high) / 2


def blip(lab: Lab) -> Timeline:
    """A freeze shorter than `fall` rounds: probes see it (a failed round), nothing fails over."""
    timing = lab.timing
    length = blip_length(timing.interval, timing.timeout, timing.fall, timing.jitter)
    tl, ready = _start(lab, f"blip: eastus frozen {length:.1f}s (< fall {timing.fall} x {timing.interval:g}s)")
    if not ready:
        return tl
    budget = lab.budget[VICTIM]
    t0 = tl.origin
    tl.mark(t0, "fault injected: eastus frozen", lab.faults.freeze(VICTIM))
    time.sleep(length)
    t1 = time.time()
    tl.mark(t1, f"fault cleared: {lab.faults.thaw(VICTIM)}")
    watch = budget.detect_down + budget.feed + 2.0  # long enough for a failover to show if one were coming
    time.sleep(watch)
    end = time.time()
    lab.client.pulling(False)
    tl.mark(_first_failed_round(lab, VICTIM, t0), "first failed probe round (probes: trend suspect)")
    clean = lab.events.first(t1, _verdict(VICTIM, status="online", trend=""))
    tl.mark(clean.at if clean else None, "probes: eastus clean again (no failures in a row)")
    tl.mark(end, f"watched {watch:.1f}s after the blip: no change")
    _add_observed(tl, lab, t0, end)
    if lab.events.first(t0, lambda e: e.source in PROBES and _is(e.source, "status_changed", replica=VICTIM)(e), end):
        tl.problem("probes changed eastus's status for a blip shorter than fall")
    if _dns_moved(lab, t0, away_from=VICTIM) is not None and (_dns_moved(lab, t0, away_from=VICTIM) or 0) <= end:
        tl.problem("the global name moved during a blip")
    if _first_failed_round(lab, VICTIM, t0) is None:
        tl.notes.append("no probe round failed: the blip was too short to be seen at all")
    tl.notes.append(f"blip {length:.2f}s = timeout {timing.timeout:g}s + between 1 round "
                    f"({timing.interval * (1 + timing.jitter):.1f}s) and fall-1 rounds "
                    f"({(timing.fall - 1) * timing.interval:.1f}s)")
    _judge_pulls(tl, lab.client, t0 - 1.0, end, [], strict=True)
    return tl


def probes_stopped(lab: Lab) -> Timeline:
    """eastus fails -> failover; probes stop (eastus repaired meanwhile): dnsd keeps the last verdict
    until health.ttl, then fails open (eastus back); probes restart."""
    tl, ready = _start(lab, "probes-stopped: dnsd keeps the last verdicts, then fails open after the TTL")
    if not ready:
        return tl
    budget, timing = lab.budget[VICTIM], lab.timing
    t_fault = tl.origin
    t_dns = _storage_outage(lab, tl)
    if t_dns is None:
        lab.client.pulling(False)
        return tl
    lab.faults.stop_probes()
    t_stop = time.time()
    tl.mark(t_stop, "probes stopped (SIGTERM)")
    tl.mark(time.time(), f"eastus repaired while probes are down: {lab.faults.storage_readable(VICTIM)}")
    t_open = _wait_dns(lab, t_stop, lab.fail_open_after + SETTLE, to=VICTIM)
    tl.mark(t_open, "DNS answer back on eastus (fail open)")
    expired = lab.events.first(t_stop, _is("dnsd", "health_expired"))
    if expired is None:
        tl.problem("dnsd logged no health_expired")
    tl.measure("fail open after probes stopped", t_stop, t_open, lab.fail_open_after,
               "health ttl + poll + tm TTL", at_least=timing.health_ttl - timing.poll_interval)
    t_start = time.time()
    lab.faults.start_probes()
    tl.mark(t_start, "probes restarted (verdicts from its state file)")
    settled = wait_for(lambda: set(probe_statuses().values()) == {"online"} and lab.client.dns_replica() == VICTIM,
                       budget.recovery + SETTLE, 0.2)
    tl.mark(settled, "probes: all online again, global name on eastus")
    end = _finish(lab, tl, t_fault)
    tl.measure("probes restart: settled", t_start, settled, budget.recovery + 2 * budget.feed,
               "detect up + feed + tm TTL (+ startup)")
    _judge_pulls(tl, lab.client, t_fault - 1.0, end, [(t_fault, t_dns)])
    return tl


def probes_one_killed(lab: Lab) -> Timeline:
    """The production shape, two probes instances with a majority quorum: eastus fails -> failover;
    one probes instance is killed (SIGKILL) mid-outage; past the health TTL the global name must stay
    away from eastus (the instance left decides alone; dnsd must not fail open), every pull after the
    failover must work; eastus repaired -> the one instance left brings it back; the killed one restarts."""
    title = "probes-one-killed: two probes instances, one killed mid-outage: the failover holds"
    instances = lab.faults.probes_instances()
    if len(instances) < 2:
        tl = Timeline(title, origin=time.time())
        tl.problem(f"needs two probes instances, this lab has {len(instances)}")
        return tl
    survivor, victim = instances[0], instances[1]
    tl, ready = _start(lab, title)
    if not ready:
        return tl
    budget, timing = lab.budget[VICTIM], lab.timing
    t_fault = tl.origin
    t_dns = _storage_outage(lab, tl, "first DNS answer changed (both probes instances agree)")
    if t_dns is None:
        lab.client.pulling(False)
        return tl
    t_kill = time.time()
    tl.mark(t_kill, f"{victim} killed mid-outage", lab.faults.kill_probes(victim))
    # its last verdict expires after health.ttl; watch past the moment a lone feed would have failed open
    hold = lab.fail_open_after + 2.0
    time.sleep(hold)
    back = _dns_moved(lab, t_kill, to=VICTIM)
    expired = lab.events.first(t_kill, _is("dnsd", "health_expired"))
    if back is not None:
        tl.problem(f"the global name went back to the broken eastus {back - t_kill:.1f}s after {victim} was killed")
    if expired is not None:
        tl.problem("dnsd logged health_expired with one probes instance still answering")
    if back is None and expired is None:
        tl.mark(time.time(), f"failover held {hold:.1f}s after the kill (health ttl {timing.health_ttl:g}s): "
                             f"global name on {lab.client.dns_replica()}, {survivor} decides alone")
    t_cleared = time.time()
    tl.mark(t_cleared, f"fault cleared: {lab.faults.storage_readable(VICTIM)}")
    t_restore = wait_for(lambda: lab.client.replica_healthy(VICTIM), SETTLE, 0.05) or time.time()
    tl.mark(t_restore, "eastus healthy again (direct check)")
    t_back = _wait_dns(lab, t_restore, budget.recovery + SETTLE, to=VICTIM)
    tl.mark(t_back, f"DNS answer back on eastus ({survivor} alone)")
    tl.measure("recovery with one instance: DNS back", t_restore, t_back, budget.detect_up + budget.feed,
               "detect up + feed")
    t_start = time.time()
    lab.faults.start_probes(victim)
    tl.mark(t_start, f"{victim} restarted (verdicts from its state file)")
    settled = wait_for(lambda: set(probe_statuses(victim).values()) == {"online"}
                       and lab.client.dns_replica() == VICTIM, budget.recovery + SETTLE, 0.2)
    tl.mark(settled, f"{victim}: all online again, global name on eastus")
    if settled is None:
        tl.problem(f"{victim} did not settle after its restart")
    end = _finish(lab, tl, t_fault)
    _judge_pulls(tl, lab.client, t_fault - 1.0, end, [(t_fault, t_dns)])
    return tl


def drain_during_outage(lab: Lab) -> Timeline:
    """eastus fails -> failover; the operator drains eastus during the outage; eastus is repaired and
    probes say online, yet the drain keeps it out of the global name; undrain -> back at once."""
    tl, ready = _start(lab, "drain-during-outage: drain eastus while it is down, repair, undrain")
    if not ready:
        return tl
    budget = lab.budget[VICTIM]
    t_fault = tl.origin
    t_dns = _storage_outage(lab, tl)
    t_drain = time.time()
    result = lab.admin("drain", "contoso", VICTIM, "--reason", "geotm drill: eastus storage outage",
                       "--actor", "geotm-drill")
    tl.mark(t_drain, "operator: dnsd drain contoso eastus", f"exit {result.returncode}")
    if result.returncode != 0:
        tl.problem(f"dnsd drain failed: {(result.stderr or result.stdout).strip()[-200:]}")
    t_repair = time.time()
    tl.mark(t_repair, f"eastus repaired: {lab.faults.storage_readable(VICTIM)}")
    online = wait_for(lambda: probe_statuses().get(VICTIM) == "online", budget.detect_up + SETTLE, 0.1)
    tl.mark(online, "probes: eastus online again")
    hold = budget.feed + budget.client_cache + 1.0
    time.sleep(hold)
    moved_back = _dns_moved(lab, t_repair, to=VICTIM)
    if moved_back is not None:
        tl.problem("the global name went back to eastus while it was drained")
    else:
        tl.mark(time.time(), f"drain held: global name still on {lab.client.dns_replica()} {hold:.1f}s after eastus "
                             f"was online")
    t_undrain = time.time()
    result = lab.admin("undrain", "contoso", VICTIM, "--reason", "geotm drill: storage repaired",
                       "--actor", "geotm-drill")
    tl.mark(t_undrain, "operator: dnsd undrain contoso eastus", f"exit {result.returncode}")
    if result.returncode != 0:
        tl.problem(f"dnsd undrain failed: {(result.stderr or result.stdout).strip()[-200:]}")
    t_back = _wait_dns(lab, t_undrain, budget.client_cache + SETTLE, to=VICTIM)
    pull_back = _wait_pull(lab, VICTIM, t_back, SETTLE) if t_back else None
    tl.mark(t_back, "DNS answer back on eastus")
    tl.mark(pull_back.ended if pull_back else None, "first successful pull from eastus again")
    end = _finish(lab, tl, t_fault)
    tl.measure("undrain: first pull from eastus", t_undrain, pull_back.ended if pull_back else None,
               budget.client_cache, "tm TTL (an operator change applies at once)")
    _judge_pulls(tl, lab.client, t_fault - 1.0, end, [(t_fault, t_dns or end)])
    return tl


SCENARIOS: dict[str, Callable[[Lab], Timeline]] = {
    "storage-failure": storage_failure,
    "blip": blip,
    "disk-full": disk_full,
    "process-killed": process_killed,
    "process-frozen": process_frozen,
    "probes-stopped": probes_stopped,
    "probes-one-killed": probes_one_killed,
    "drain-during-outage": drain_during_outage,
    "dockerd-pull": dockerd_pull,
}
SHORT = ("storage-failure", "blip")
TWO_PROBES = ("probes-one-killed",)  # not in the compose stack's default run: it has one probes instance
DAEMON = ("dockerd-pull",)  # only where a docker daemon pulls too (the compose drill, given one): short or not
