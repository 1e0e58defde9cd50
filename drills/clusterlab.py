"""The cluster lab: the local lab (drills.local: namespace, PKI, registries, two probes instances,
the skopeo client) with one truth in etcd instead of one dnsd's files: a 3-member etcd on the drill
namespace's loopback, three dnsd (dnsd-1 where the client's resolver points; dnsd-2 and dnsd-3 each
in a network namespace of its own, joined to the drill's by a veth pair, so one can be cut off from
etcd by a route and still answer DNS), and the probes instances publishing their verdicts to etcd.

    drill ns (10.77.0.0/24 on lo): registries, probes, etcd m0..m2 (10.77.0.21-23), dnsd-1 (10.77.0.53)
    dnsd-2 ns: 10.77.2.53 --veth-- 10.77.2.1 in the drill ns;  dnsd-3 ns: 10.77.3.53 --veth-- 10.77.3.1
"""
from __future__ import annotations

import json
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from drills import labconfig
from drills.errors import LabError
from drills.etcdlocal import Etcd
from drills.labconfig import DNS_ADDRESS, Paths, Timing
from drills.local import LocalLab
from drills.localprocs import LocalProcesses
from drills.netns import Namespace, ip
from drills.observe import Events, wait_for
from drills.proc import Child, geotm_env

ETCD_ADDRESSES = ("10.77.0.21", "10.77.0.22", "10.77.0.23")
PREFIX = "/geotm/"
MEMBER_TTL = 3.0  # each dnsd's registration lease
ETCD_TIMEOUT = 1.0  # cluster.etcd.timeout: a cut-off dnsd notices within a few of these


@dataclass(frozen=True, slots=True)
class DnsdSpec:
    name: str
    address: str  # DNS on :53 and the admin API on labconfig.ADMIN_PORT
    netns: str | None  # suffix of its own namespace (None: the drill's)
    link: str | None = None  # the drill side's address of its veth pair


DNSD = (DnsdSpec("dnsd-1", DNS_ADDRESS, None), DnsdSpec("dnsd-2", "10.77.2.53", "d2", "10.77.2.1"),
        DnsdSpec("dnsd-3", "10.77.3.53", "d3", "10.77.3.1"))


def cluster_config(timing: Timing, paths: Paths, etcd_urls: list[str]) -> dict:
    """The local lab's config with a cluster section; verdicts come through etcd, so no feeds are
    polled; state files relative (every dnsd's copy of the file reads the same: one digest)."""
    data = labconfig.geotm_config(timing, paths)
    data["health"].pop("feeds")
    data["health"]["state_file"] = "dnsd-health.json"
    data["admin"]["state_file"] = "dnsd-overrides.json"
    data["cluster"] = {"etcd": {"endpoints": etcd_urls, "prefix": PREFIX, "timeout": f"{ETCD_TIMEOUT:g}s"},
                       "member_ttl": f"{MEMBER_TTL:g}s"}
    return data


class ClusterProcesses(LocalProcesses):
    """The local lab's processes, with etcd and three dnsd in place of one dnsd."""

    def __init__(self, paths: Paths, events: Events, namespaces: dict[str, Namespace]):
        super().__init__(paths, events)
        self.namespaces = namespaces
        self.etcd: Etcd | None = None
        self.instances: dict[str, Child] = {}

    def start_etcd(self) -> Etcd:
        binary = shutil.which("etcd")
        if binary is None:
            raise LabError("etcd not installed (apt-get install -y --no-install-recommends etcd-server etcd-client)")
        self.etcd = Etcd(binary, self.paths.root / "etcd", len(ETCD_ADDRESSES), hosts=list(ETCD_ADDRESSES),
                         fixed_ports=True)  # a killed member restarts on its own ports
        self.etcd.start()
        return self.etcd

    def config_of(self, spec: DnsdSpec) -> Path:
        return self.paths.root / spec.name / "geotm.yaml"

    def start_dnsd(self) -> None:
        for spec in DNSD:
            self.start_instance(spec)

    def start_instance(self, spec: DnsdSpec) -> None:
        prefix = ["ip", "netns", "exec", self.namespaces[spec.name].name] if spec.netns else []
        argv = [*prefix, sys.executable, "-m", "dnsd", "serve", "--config", str(self.config_of(spec)),
                "--listen", f"{spec.address}:53", "--admin-listen", f"{spec.address}:{labconfig.ADMIN_PORT}",
                "--log-format", "json"]
        self.instances[spec.name] = Child(spec.name, argv, self.log(spec.name), cwd=self.paths.root,
                                          env=geotm_env(), listener=self.events.log_line)
        if spec.name == DNSD[0].name:
            self.dnsd = self.instances[spec.name]  # the one the local lab's teardown and faults know

    def stop_all(self) -> None:
        for child in self.instances.values():
            try:
                child.stop()
            except Exception:
                pass
        super().stop_all()
        if self.etcd is not None:
            self.etcd.stop()


class ClusterLab(LocalLab):
    def __init__(self, timing: Timing, workdir: Path, say: Callable[[str], None] = print):
        super().__init__(timing, workdir, say)
        self.namespaces = {spec.name: Namespace(f"{self.ns.name}{spec.netns}") for spec in DNSD if spec.netns}
        self.processes = ClusterProcesses(self.paths, self.watchers.events, self.namespaces)

    def _write_geotm_config(self) -> None:
        """Called by LocalLab.setup once the registries are up: etcd and the dnsd namespaces first."""
        for address in ETCD_ADDRESSES:
            ip("addr", "add", f"{address}/32", "dev", "lo")
        self._link_namespaces()
        etcd = self.processes.start_etcd()
        self.say(f"etcd: 3 members {', '.join(etcd.urls)}")
        super()._write_geotm_config()  # the admin token, and the local lab's config (replaced below)
        text = "# generated by geotm cluster drill\n" + yaml.safe_dump(
            cluster_config(self.timing, self.paths, etcd.urls), sort_keys=False)
        self.config_path.write_text(text)  # probes and `dnsd <command> --config` (dnsd-1's admin API)
        for spec in DNSD:
            path = self.processes.config_of(spec)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    def _link_namespaces(self) -> None:
        for spec in DNSD:
            if spec.netns is None:
                continue
            namespace = self.namespaces[spec.name]
            namespace.create((spec.address,), DNS_ADDRESS)  # its lo holds its own address
            here, there = f"gt{spec.netns}a", f"gt{spec.netns}b"
            ip("link", "add", here, "type", "veth", "peer", "name", there, "netns", namespace.name)
            ip("addr", "add", f"{spec.link}/24", "dev", here)
            ip("link", "set", here, "up")
            ip("-n", namespace.name, "addr", "add", f"{spec.address[:-3]}.2/24", "dev", there)
            ip("-n", namespace.name, "link", "set", there, "up")
            ip("-n", namespace.name, "route", "add", "default", "via", str(spec.link))
            # answers to the drill namespace's own addresses go back the same way
        self.say("dnsd namespaces: " + ", ".join(f"{s.name} {s.address}" for s in DNSD if s.netns))

    def setup(self):
        lab = super().setup()
        for spec in DNSD:
            if wait_for(lambda s=spec: connected(s, self.token), 30, 0.2) is None:
                raise LabError(f"{spec.name} did not connect to etcd; see {self.processes.log(spec.name)}")
        self.say("dnsd-1..3 connected to etcd")
        return lab

    @property
    def token(self) -> str:
        return self.paths.admin_token.read_text().strip()

    def teardown(self) -> None:
        super().teardown()
        for namespace in self.namespaces.values():
            namespace.delete()


# -- talking to one dnsd -------------------------------------------------------------------------

def admin_call(spec: DnsdSpec, token: str, method: str, path: str, body: dict | None = None,
               timeout: float = 10.0) -> tuple[int, dict | str]:
    request = urllib.request.Request(f"http://{spec.address}:{labconfig.ADMIN_PORT}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"X-Geotm-Actor": "drill", "Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
            return response.status, json.loads(text) if text.startswith("{") else text
    except urllib.error.HTTPError as err:
        text = err.read().decode()
        return err.code, json.loads(text) if text.startswith("{") else text
    except OSError as err:
        return 0, str(err)


def metric(spec: DnsdSpec, name: str, token: str) -> float | None:
    status, text = admin_call(spec, token, "GET", "/metrics", timeout=2.0)  # the token: all metrics, not health only
    if status != 200 or not isinstance(text, str):
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def connected(spec: DnsdSpec, token: str) -> bool:
    return metric(spec, "geotm_cluster_connected", token) == 1.0
