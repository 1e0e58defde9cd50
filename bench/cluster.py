"""Cluster propagation: how long a drain takes from the admin API call returning to the last of N
dnsd answering the new way, with N real dnsd processes sharing one real etcd on loopback (1 member,
then 3). Each round drains (then undrains) contoso/westeurope through one instance's API, in turn,
and queries every instance (a westeurope client, by ECS) every POLL seconds until each answers the
new way; a round's figure is the slowest instance's. Every loop is bounded in count and time.

    .venv/bin/python bench/cluster.py                           # etcd 1 and 3 members x 3 and 10 dnsd, 20 drains
    .venv/bin/python bench/cluster.py --members 1 --dnsd 3 --drains 5

Exit status: 0 measured (every change seen by every instance within --round-timeout), 1 not, 2 a tool
is missing. Results: bench/results/cluster.json (ignored by git).
"""
from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import socket
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import dns.edns
import dns.message
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]  # dnsd and drills when not installed

from dnsd.common.children import Child, ChildFailed, free_port  # noqa: E402
from drills.etcdlocal import Etcd  # noqa: E402

EXAMPLE = ROOT / "config" / "example.yaml"
TOKEN = "bench-cluster-token"
REGISTRY, REPLICA = "contoso", "westeurope"
WESTEUROPE_CLIENT = "198.51.100.0"  # ECS /24 of a westeurope client network in the example config
SERVING, DRAINED = "127.0.0.12", "127.0.0.11"  # its answer: westeurope itself, then eastus (next nearest)
POLL = 0.002  # seconds between queries to an instance still answering the old way
START_TIMEOUT = 60.0  # seconds for etcd or all dnsd to be up and connected


def config_text(etcd_urls: list[str], prefix: str) -> str:
    """One config for every instance (the same text: the same digest); addresses come from flags."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["health"], data["probes"] = {}, {}
    data["server"].pop("rate_limit", None)  # the poller's queries must never be rate limited
    data["admin"] = {"listen": "127.0.0.1:8054", "token_file": "token", "state_file": "overrides.json"}
    data["cluster"] = {"etcd": {"endpoints": etcd_urls, "prefix": prefix, "timeout": "2s"}}
    return yaml.safe_dump(data, sort_keys=False)


class Instance:
    def __init__(self, folder: Path, text: str):
        folder.mkdir(parents=True)
        (folder / "token").write_text(TOKEN + "\n")
        (folder / "geotm.yaml").write_text(text)
        self.folder = folder
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self._pick_ports()

    def _pick_ports(self) -> None:
        self.port, self.admin_port = free_port(), free_port()
        argv = [sys.executable, "-m", "dnsd", "serve", "--config", str(self.folder / "geotm.yaml"), "--listen",
                f"127.0.0.1:{self.port}", "--admin-listen", f"127.0.0.1:{self.admin_port}", "--log-level", "warning"]
        self.child = Child(argv, self.folder / "dnsd.log", name=f"dnsd {self.folder.name}", cwd=str(ROOT))
        self.sock.connect(("127.0.0.1", self.port))

    def wait_ready(self, timeout: float) -> None:
        """Up and connected to etcd; started again on new ports (twice at most) when another process
        took a picked port first."""
        for attempt in range(3):
            try:
                self.child.wait_ready(self.connected, timeout=timeout)
                return
            except ChildFailed as err:
                if "address already in use" not in str(err) or attempt == 2:
                    raise
                self._pick_ports()
                self.child.start()

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Authorization": f"Bearer {TOKEN}", "X-Geotm-Actor": "bench",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()
        except OSError as err:
            return 0, str(err)

    def connected(self) -> bool:
        status, text = self.call("GET", "/metrics")
        return status == 200 and "geotm_cluster_connected 1" in text


def query_wire() -> bytes:
    ecs = dns.edns.ECSOption(WESTEUROPE_CLIENT, 24)
    return dns.message.make_query(f"{REGISTRY}.azurecr.test", "A", use_edns=0, options=[ecs]).to_wire()


def answer_of(wire: bytes) -> str | None:
    try:
        reply = dns.message.from_wire(wire)
    except Exception:  # noqa: BLE001 - a garbled datagram is not an answer
        return None
    return reply.answer[-1][0].address if reply.answer else None


def wait_all(instances: list[Instance], expected: str, query: bytes, timeout: float) -> list[float | None]:
    """Seconds until each instance answered `expected` (None: not within timeout)."""
    started = time.monotonic()
    seen: list[float | None] = [None] * len(instances)
    by_socket = {instance.sock.fileno(): index for index, instance in enumerate(instances)}
    while None in seen and time.monotonic() - started < timeout:
        for index, instance in enumerate(instances):
            if seen[index] is None:
                try:
                    instance.sock.send(query)
                except OSError:
                    pass
        window_end = time.monotonic() + POLL
        while (left := window_end - time.monotonic()) > 0:
            ready, _, _ = select.select(list(by_socket), [], [], left)
            for fileno in ready:
                index = by_socket[fileno]
                try:
                    wire = instances[index].sock.recv(4096)
                except OSError:
                    continue
                if seen[index] is None and answer_of(wire) == expected:
                    seen[index] = time.monotonic() - started
    return seen


def run_one(work: Path, members: int, count: int, drains: int, round_timeout: float, etcd_binary: str) -> dict:
    etcd = Etcd(etcd_binary, work / f"etcd-{members}-{count}", members)
    instances: list[Instance] = []
    load = os.getloadavg()[0]  # the machine is shared: read the figures with it
    try:
        etcd.start()
        text = config_text(etcd.urls, f"/bench-{members}-{count}/")
        instances = [Instance(work / f"e{members}-n{count}" / f"d{i}", text) for i in range(count)]
        for instance in instances:
            instance.child.start()
        deadline = time.monotonic() + START_TIMEOUT
        for instance in instances:
            instance.wait_ready(max(1.0, deadline - time.monotonic()))
        query = query_wire()
        if None in wait_all(instances, SERVING, query, round_timeout):
            raise ChildFailed("an instance does not answer westeurope before the first drain", None, "")
        rounds = []
        for index in range(drains):
            via = instances[index % count]
            drain = index % 2 == 0
            if drain:
                status, text_ = via.call("POST", "/v1/overrides", {"registry": REGISTRY, "replica": REPLICA,
                                                                  "kind": "drain", "reason": "bench"})
            else:
                status, text_ = via.call("DELETE", f"/v1/overrides/{REGISTRY}/{REPLICA}?kind=drain")
            if status >= 300:
                raise ChildFailed(f"round {index}: HTTP {status}: {text_[:200]}", None, "")
            seen = wait_all(instances, DRAINED if drain else SERVING, query, round_timeout)
            rounds.append(seen)
            time.sleep(0.05)  # let the watches settle before the next change
        return {**summary(members, count, rounds, round_timeout), "loadavg_before": load}
    finally:
        for instance in instances:
            instance.child.stop()
            instance.sock.close()
        etcd.stop()


def summary(members: int, count: int, rounds: list[list[float | None]], round_timeout: float) -> dict:
    last = [max(seen) for seen in rounds if None not in seen]  # type: ignore[type-var]
    every = [s for seen in rounds for s in seen if s is not None]
    missed = sum(1 for seen in rounds for s in seen if s is None)
    ms = lambda values, f: round(f(values) * 1000, 1) if values else None  # noqa: E731
    return {"etcd_members": members, "dnsd": count, "changes": len(rounds), "missed": missed,
            "round_timeout_s": round_timeout,
            "last_instance_ms": {"median": ms(last, statistics.median), "max": ms(last, max),
                                 "min": ms(last, min)},
            "any_instance_ms": {"median": ms(every, statistics.median), "max": ms(every, max)},
            "rounds_ms": [[round(s * 1000, 1) if s is not None else None for s in seen] for seen in rounds]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", default="1,3", help="etcd cluster sizes (comma separated)")
    parser.add_argument("--dnsd", default="3,10", help="dnsd instance counts (comma separated)")
    parser.add_argument("--drains", type=int, default=20, help="changes per run (drain, undrain, ...)")
    parser.add_argument("--round-timeout", type=float, default=5.0, help="seconds a change may take to be seen")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop starting runs after this")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "cluster.json"))
    args = parser.parse_args(argv)
    binary = shutil.which("etcd")
    if binary is None:
        print("bench/cluster.py: etcd not installed (apt-get install -y --no-install-recommends etcd-server)",
              file=sys.stderr)
        return 2
    started, results, ok = time.monotonic(), [], True
    with tempfile.TemporaryDirectory(prefix="geotm-bench-cluster-") as tmp:
        for members in (int(m) for m in args.members.split(",")):
            for count in (int(n) for n in args.dnsd.split(",")):
                if time.monotonic() - started > args.max_seconds:
                    print(f"stopped: --max-seconds {args.max_seconds:g} reached", file=sys.stderr)
                    ok = False
                    break
                try:
                    result = run_one(Path(tmp), members, count, args.drains, args.round_timeout, binary)
                except ChildFailed as err:
                    print(f"etcd x{members}, dnsd x{count}: FAILED: {err}", file=sys.stderr)
                    ok = False
                    continue
                ok = ok and result["missed"] == 0
                results.append(result)
                print(f"etcd x{members}, dnsd x{count}: last instance median {result['last_instance_ms']['median']} ms, "
                      f"max {result['last_instance_ms']['max']} ms ({result['changes']} changes, "
                      f"{result['missed']} missed)", flush=True)
    print("\n| etcd members | dnsd | changes | last instance: median | max | any instance: median | missed |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['etcd_members']} | {r['dnsd']} | {r['changes']} | {r['last_instance_ms']['median']} ms | "
              f"{r['last_instance_ms']['max']} ms | {r['any_instance_ms']['median']} ms | {r['missed']} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"poll_s": POLL, "results": results}, indent=2) + "\n")
    return 0 if ok and results else 1


if __name__ == "__main__":
    sys.exit(main())
