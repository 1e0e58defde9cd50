"""geotm cluster drill: the cluster lab (drills.clusterlab: 3-member etcd, 3 dnsd, 2 probes, real
registries, a client) and its scenarios, each with measured times and zero unanswered queries (every
dnsd is asked the global name every QUERY_PERIOD all along; one unanswered query fails the scenario):

    drain-everywhere   a drain through dnsd-1 seen by dnsd-2 and dnsd-3 (and undone)
    leader-killed      etcd's leader SIGKILLed: a new one elected, a drain through dnsd-1 then works
    cut-off            dnsd-3 cut off from etcd (blackhole routes) during a drain, then reconnected
    probes-killed      a replica outage, then one probes instance SIGKILLed: the failover holds
    etcd-down          every etcd member down: answers go on from the last state, changes refused

    python -m drills.clusterdrill [--scenario NAME ...] [--workdir DIR] [--keep]     (as root)
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from drills.clusterlab import DNSD, ETCD_ADDRESSES, ETCD_TIMEOUT, ClusterLab, DnsdSpec, admin_call, \
    connected, metric
from drills.errors import LabError
from drills.lab import Lab
from drills.labconfig import BY_ADDRESS, DEFAULT, GLOBAL_NAME, REGISTRY
from drills.netns import ip
from drills.observe import wait_for
from drills.proc import parse_timestamp
from drills.scenarios import _judge_pulls, begin_timeline
from drills.timeline import Timeline, summary

QUERY_PERIOD = 0.1  # seconds between queries to each dnsd
QUERY_TIMEOUT = 1.0  # a query without an answer by then is unanswered
VICTIM, NEXT = "eastus", "westeurope"  # the client's nearest replica, and where a drain of it sends it
RUN_LIMIT = 1800  # seconds for the whole drill (SIGALRM)
SETTLE = 20.0  # seconds given beyond a budget before "not seen" is declared


class Answers:
    """Every dnsd asked for the global name every QUERY_PERIOD, each by a thread of its own: what each
    answered when, and every query left unanswered."""

    def __init__(self) -> None:
        self.seen: dict[str, list[tuple[float, str | None]]] = {spec.name: [] for spec in DNSD}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._ask, args=(spec,), daemon=True, name=f"ask {spec.name}")
                         for spec in DNSD]

    def start(self) -> Answers:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(QUERY_TIMEOUT + 1)

    def _ask(self, spec: DnsdSpec) -> None:
        query = dns.message.make_query(GLOBAL_NAME, "A")
        while not self._stop.is_set():
            asked = time.time()
            answer = None
            try:
                reply = dns.query.udp(query, spec.address, port=53, timeout=QUERY_TIMEOUT)
                answer = next((BY_ADDRESS.get(rrset[0].address, rrset[0].address) for rrset in reversed(reply.answer)
                               if rrset.rdtype == dns.rdatatype.A), "no A record")
            except (dns.exception.DNSException, OSError):
                pass
            self.seen[spec.name].append((asked, answer))
            self._stop.wait(max(0.0, QUERY_PERIOD - (time.time() - asked)))

    def unanswered(self, start: float, end: float | None = None) -> dict[str, int]:
        end = end or time.time()
        return {name: sum(1 for at, answer in list(seen) if start <= at <= end and answer is None)
                for name, seen in self.seen.items()}

    def first(self, name: str, after: float, replica: str) -> float | None:
        return next((at for at, answer in list(self.seen[name]) if at >= after and answer == replica), None)

    def latest(self, name: str) -> str | None:
        seen = self.seen[name]
        return seen[-1][1] if seen else None


# -- steps ----------------------------------------------------------------------------------------

def _token(lab: Lab) -> str:
    return (lab.workdir / "admin-token").read_text().strip()


def _drain(lab: Lab, via: DnsdSpec, replica: str = VICTIM) -> tuple[int, object]:
    return admin_call(via, _token(lab), "POST", "/v1/overrides",
                      {"registry": REGISTRY, "replica": replica, "kind": "drain", "reason": "cluster drill"})


def _undrain(lab: Lab, via: DnsdSpec, replica: str = VICTIM) -> tuple[int, object]:
    return admin_call(via, _token(lab), "DELETE", f"/v1/overrides/{REGISTRY}/{replica}?kind=drain")


def _all_answer(answers: Answers, replica: str, after: float, limit: float,
                names: tuple[str, ...] = tuple(s.name for s in DNSD)) -> dict[str, float | None]:
    """When each dnsd first answered `replica` after `after` (waiting up to limit seconds)."""
    wait_for(lambda: all(answers.first(name, after, replica) for name in names), limit, 0.05)
    return {name: answers.first(name, after, replica) for name in names}


def _normal(lab: Lab, answers: Answers) -> str | None:
    """Every dnsd connected, no override, every dnsd answering eastus."""
    for spec in DNSD:
        _undrain(lab, spec)
    now = time.time()
    if wait_for(lambda: all(connected(s, _token(lab)) for s in DNSD), 30, 0.2) is None:
        return "not every dnsd is connected to etcd"
    if None in _all_answer(answers, VICTIM, now, 60).values():
        return f"not every dnsd answers {VICTIM}: " + ", ".join(f"{s.name} {answers.latest(s.name)}" for s in DNSD)
    return None


def _begin(lab: Lab, answers: Answers, title: str) -> tuple[Timeline, bool]:
    """Back to normal, then the client's pulls of the global name running for a second (through
    dnsd-1, its resolver) before the timeline's origin."""
    return begin_timeline(lab, title, _normal(lab, answers))


def _end(tl: Timeline, answers: Answers, lab: Lab, windows: list[tuple[float, float]] | None = None) -> Timeline:
    """Pulls stop; each one must have succeeded (but inside a detection window); no query unanswered."""
    if tl.problems and tl.problems[0].startswith("no clean start"):
        return tl
    time.sleep(1.0)
    end = time.time()
    lab.client.pulling(False)
    _judge_pulls(tl, lab.client, tl.origin, end, windows or [], strict=windows is None)
    missed = {name: count for name, count in answers.unanswered(tl.origin).items() if count}
    asked = sum(1 for seen in answers.seen.values() for at, _ in list(seen) if at >= tl.origin)
    if missed:
        tl.problem(f"unanswered queries: {missed} (of {asked})")
    else:
        tl.notes.append(f"{asked} queries to the 3 dnsd during the scenario, 0 unanswered")
    return tl


# -- scenarios ------------------------------------------------------------------------------------

def _logged(lab: Lab, process: str, event: str, after: float) -> float | None:
    """When a process's JSON log first says `event` after `after`."""
    try:
        lines = (lab.workdir / "logs" / f"{process}.log").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if f'"{event}"' not in line:
            continue
        try:
            at = parse_timestamp(json.loads(line).get("timestamp"))
        except ValueError:
            continue
        if at is not None and at >= after:
            return at
    return None


def drain_everywhere(lab: Lab, answers: Answers) -> Timeline:
    tl, ok = _begin(lab, answers, "a drain through dnsd-1, seen by dnsd-2 and dnsd-3")
    if not ok:
        return _end(tl, answers, lab)
    status, body = _drain(lab, DNSD[0])
    returned = tl.mark(time.time(), "drain eastus through dnsd-1's admin API returned", f"HTTP {status}")
    if status != 201:
        tl.problem(f"drain refused: {body}")
        return _end(tl, answers, lab)
    seen = _all_answer(answers, NEXT, returned, 1 + SETTLE)
    for name, at in seen.items():
        tl.measure(f"{name} answers {NEXT}", returned, at, 1.0, "issue 12: under 1 s")
    status, body = _undrain(lab, DNSD[1])
    returned = tl.mark(time.time(), "undrain through dnsd-2's admin API returned", f"HTTP {status}")
    back = _all_answer(answers, VICTIM, returned, 1 + SETTLE)
    tl.measure("last dnsd back on eastus", returned, max((t for t in back.values() if t), default=None)
               if None not in back.values() else None, 1.0)
    return _end(tl, answers, lab)


def _leader(urls: list[str]) -> int | None:
    """The index of the member that is leader (asked of each member still up)."""
    for index, url in enumerate(urls):
        try:
            request = urllib.request.Request(url + "/v3/maintenance/status", data=b"{}", method="POST")
            with urllib.request.urlopen(request, timeout=1) as response:
                status = json.loads(response.read())
        except (OSError, ValueError):
            continue
        if int(status.get("leader", 0)) and status.get("leader") == status["header"].get("member_id"):
            return index
    return None


def leader_killed(lab: Lab, answers: Answers, etcd) -> Timeline:
    tl, ok = _begin(lab, answers, "etcd's leader killed")
    if not ok:
        return _end(tl, answers, lab)
    leader = _leader(etcd.urls)
    if leader is None:
        tl.problem("no leader found")
        return _end(tl, answers, lab)
    etcd.members[leader].kill()
    killed = tl.mark(time.time(), f"SIGKILL etcd m{leader} (the leader)")
    others = [url for i, url in enumerate(etcd.urls) if i != leader]
    elected = wait_for(lambda: _leader(others) is not None, 10, 0.05)
    tl.measure("a new leader elected", killed, elected, 5.0,
               "election timeout 500 ms, a few rounds")
    drained = None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # the first drain may meet the election: refused, never half-done
        status, _ = _drain(lab, DNSD[0])
        if status == 201:
            drained = tl.mark(time.time(), "drain through dnsd-1 accepted")
            break
        time.sleep(0.2)
    tl.measure("a drain accepted after the kill", killed, drained, 10.0)
    if drained is not None:
        seen = _all_answer(answers, NEXT, drained, 1 + SETTLE)
        tl.measure("the last dnsd answers westeurope", drained,
                   max(seen.values()) if None not in seen.values() else None, 1.0)  # type: ignore[type-var]
    etcd.start(only=leader)
    tl.mark(time.time(), f"etcd m{leader} restarted")
    return _end(tl, answers, lab)


def _cut(namespace: str, victim: DnsdSpec, action: str) -> None:
    """Packets between the dnsd's namespace and etcd vanish, both ways (a watch stream is etcd's
    packets to us: cutting only our way would still deliver it); DNS and the admin API, on the dnsd's
    own address, still reach it."""
    for address in ETCD_ADDRESSES:
        ip("-n", namespace, "route", action, "blackhole", f"{address}/32")
    ip("route", action, "blackhole", f"{victim_link_address(victim)}/32")


def victim_link_address(spec: DnsdSpec) -> str:
    """The address a namespaced dnsd reaches etcd from (its end of the veth pair)."""
    return spec.address.rsplit(".", 1)[0] + ".2"


def cut_off(lab: Lab, answers: Answers) -> Timeline:
    victim = DNSD[2]
    namespace = lab.stack.namespaces[victim.name]  # type: ignore[attr-defined]
    tl, ok = _begin(lab, answers, "dnsd-3 cut off from etcd during a drain, then reconnected")
    if not ok:
        return _end(tl, answers, lab)
    _cut(namespace.name, victim, "add")
    cut = tl.mark(time.time(), "dnsd-3 cut off from etcd (blackhole routes both ways)")
    status, _ = _drain(lab, DNSD[0])
    drained = tl.mark(time.time(), "drain through dnsd-1", f"HTTP {status}")
    seen = _all_answer(answers, NEXT, drained, 1 + SETTLE, names=(DNSD[0].name, DNSD[1].name))
    tl.measure("dnsd-2 answers westeurope", drained, seen[DNSD[1].name], 1.0)
    noticed = wait_for(lambda: metric(victim, "geotm_cluster_connected", _token(lab)) == 0.0, 30, 0.1)
    tl.measure("dnsd-3 reports geotm_cluster_connected 0", cut, noticed,
               4 * (1 + 3 * ETCD_TIMEOUT), "two missed heartbeats, each up to 3 endpoints x the etcd timeout")
    if answers.first(victim.name, drained, NEXT) is not None:
        tl.problem("dnsd-3 answered the drain while cut off")
    else:
        tl.notes.append("dnsd-3 kept answering eastus (its last known state) while cut off")
    _cut(namespace.name, victim, "del")
    mended = tl.mark(time.time(), "routes back")
    converged = _all_answer(answers, NEXT, mended, 10 + SETTLE, names=(victim.name,))[victim.name]
    tl.measure("dnsd-3 answers westeurope after reconnecting", mended, converged, 10.0,
               "reconnect backoff (at most 3 s) + a full read")
    return _end(tl, answers, lab)


def probes_killed(lab: Lab, answers: Answers) -> Timeline:
    tl, ok = _begin(lab, answers, "a replica outage, then one probes instance killed: the failover holds")
    if not ok:
        return _end(tl, answers, lab)
    tl.notes.append(lab.faults.storage_unreadable(VICTIM))
    broken = tl.mark(time.time(), "eastus storage unreadable")
    moved = _all_answer(answers, NEXT, broken, 60)
    budget = lab.budget[VICTIM]
    tl.measure("the last dnsd fails over to westeurope", broken,
               max(moved.values()) if None not in moved.values() else None,  # type: ignore[type-var]
               budget.detect_down + budget.feed, "detection + feed (dnsd.routing.budget); etcd's watch is faster")
    tl.notes.append(lab.faults.kill_probes("probes-b"))
    killed = tl.mark(time.time(), "probes-b SIGKILLed")
    ttl = lab.config.health.ttl
    time.sleep(ttl + 3)  # its verdicts go with its lease: the quorum is then counted over probes alone
    gone = _logged(lab, "dnsd-1", "health_feed_gone", killed)
    tl.measure("probes-b's verdicts gone from dnsd-1 (its lease ended)", killed, gone, ttl + 2,
               f"a lease of health.ttl {ttl:g}s renewed every third of it", at_least=ttl * 2 / 3 - 0.5)
    back = [name for name in answers.seen if any(at >= killed and answer == VICTIM for at, answer in
                                                  list(answers.seen[name]))]
    if back:
        tl.problem(f"failover did not hold after probes-b died: {back} answered eastus again")
    else:
        tl.notes.append(f"every dnsd stayed on westeurope for {ttl + 3:g}s after probes-b died (lease {ttl:g}s)")
    tl.notes.append(lab.faults.storage_readable(VICTIM))
    lab.faults.processes.probes["probes-b"].stop()  # type: ignore[attr-defined]  # collect the killed one
    lab.faults.start_probes("probes-b")
    last_moved = max(moved.values()) if None not in moved.values() else time.time()  # type: ignore[type-var]
    return _end(tl, answers, lab, windows=[(broken, last_moved)])


def etcd_down(lab: Lab, answers: Answers, etcd) -> Timeline:
    tl, ok = _begin(lab, answers, "every etcd member down: answers go on from the last state")
    if not ok:
        return _end(tl, answers, lab)
    status, _ = _drain(lab, DNSD[0])
    drained = tl.mark(time.time(), "drain through dnsd-1", f"HTTP {status}")
    _all_answer(answers, NEXT, drained, 5)
    for member in etcd.members:
        member.kill()
    down = tl.mark(time.time(), "SIGKILL every etcd member")
    noticed = wait_for(lambda: all(metric(s, "geotm_cluster_connected", _token(lab)) == 0.0 for s in DNSD), 30, 0.1)
    tl.measure("every dnsd reports geotm_cluster_connected 0", down, noticed,
               4 * (1 + 3 * ETCD_TIMEOUT))
    status, body = _undrain(lab, DNSD[1])
    if status != 503:
        tl.problem(f"an undrain without etcd was not refused: HTTP {status} {body}")
    else:
        tl.notes.append("an undrain through dnsd-2 was refused: HTTP 503 (NOT done, no dnsd changed)")
    time.sleep(5)
    if any(answers.first(s.name, down, VICTIM) is not None for s in DNSD):
        tl.problem("a dnsd left the last known state (answered eastus) while etcd was down")
    else:
        tl.notes.append("every dnsd answered westeurope (the drain, the last known state) while etcd was down")
    etcd.start()
    back = tl.mark(time.time(), "etcd restarted")
    again = wait_for(lambda: all(connected(s, _token(lab)) for s in DNSD), 30, 0.1)
    tl.measure("every dnsd connected again", back, again, 10.0)
    return _end(tl, answers, lab)


SCENARIOS: dict[str, Callable[..., Timeline]] = {
    "drain-everywhere": lambda lab, answers, etcd: drain_everywhere(lab, answers),
    "leader-killed": leader_killed,
    "cut-off": lambda lab, answers, etcd: cut_off(lab, answers),
    "probes-killed": lambda lab, answers, etcd: probes_killed(lab, answers),
    "etcd-down": etcd_down,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS))
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("ip", "etcd", "docker-registry", "skopeo", "openssl", "unshare", "nsenter")
               if shutil.which(tool) is None]
    if missing or not hasattr(signal, "SIGALRM"):
        print(f"geotm cluster drill cannot run here: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    names = args.scenario or list(SCENARIOS)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gtdrill-cluster-"))
    workdir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGALRM, lambda signum, _frame: (_ for _ in ()).throw(SystemExit(128 + signum)))
    signal.alarm(RUN_LIMIT)
    say = lambda text: print(text, flush=True)  # noqa: E731
    stack = ClusterLab(DEFAULT, workdir, say)
    started, timelines, answers = time.monotonic(), [], Answers()
    try:
        try:
            lab = stack.setup()
        except (LabError, OSError, RuntimeError) as err:
            say(f"lab setup failed: {err}")
            return 1
        lab.stack = stack  # type: ignore[attr-defined]  # the scenarios reach the namespaces through it
        say(f"lab ready in {time.monotonic() - started:.1f}s")
        answers.start()
        for name in names:
            began = time.monotonic()
            timeline = SCENARIOS[name](lab, answers, stack.processes.etcd)
            timeline.name = name
            timelines.append(timeline)
            say(timeline.render())
            say(f"  ({name} took {time.monotonic() - began:.1f}s)\n")
        say(summary(timelines))
        passed = all(t.passed for t in timelines)
        say(f"geotm cluster drill {'PASSED' if passed else 'FAILED'}: {len(timelines)} scenarios in "
            f"{time.monotonic() - started:.0f}s")
        return 0 if passed else 1
    finally:
        signal.alarm(0)
        answers.stop()
        stack.teardown()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"kept {workdir}")


if __name__ == "__main__":
    sys.exit(main())
