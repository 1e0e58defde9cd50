"""What the drill lab looks like: addresses, timings and the configs it generates (pure functions).

Everything lives inside the drill's own network namespace, on 10.77.0.0/24 addresses put on that
namespace's loopback device: replicas on .11-.13 (TLS :443, debug/health :5001), two probes
instances on .2 and .3 (the production shape: dnsd needs a majority of the instances that answer),
dnsd on .53 (DNS :53, admin :8054). The client resolver is dnsd itself, so nothing caches between
dnsd and the client: the traffic-manager TTL still counts in the budget, as it would for a client
behind a caching resolver.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dnsd import names

REGISTRY = "contoso"
ZONE = "azurecr.test"
NETWORK = "10.77.0.0/24"
DNS_ADDRESS = "10.77.0.53"
PROBES_ADDRESS = "10.77.0.2"   # the first probes instance (the one the lab watches)
PROBES_B_ADDRESS = "10.77.0.3"
PROBES_PORT = 8053
ADMIN_PORT = 8054
REGISTRY_PORT = 443
DEBUG_PORT = 5001
REPOSITORY = "drill/hello"
TAG = "1"
CANARY_REPOSITORY = "geotm/canary"
STORAGE_SIZE_MB = 64  # every replica's storage tmpfs, in both labs (docker-compose.yml says 64m too)
LATENCY_MS = {"eastus": {"westeurope": 85, "southeastasia": 215}, "westeurope": {"southeastasia": 160}}


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    name: str
    address: str

    @property
    def host(self) -> str:
        return names.default_replica_host(REGISTRY, self.name, ZONE)

    @property
    def regional(self) -> str:
        return names.regional_name(REGISTRY, self.name, ZONE)

    @property
    def data(self) -> str:
        return names.data_name(REGISTRY, self.name, ZONE)


REPLICAS = (ReplicaSpec("eastus", "10.77.0.11"), ReplicaSpec("westeurope", "10.77.0.12"),
            ReplicaSpec("southeastasia", "10.77.0.13"))
REPLICA = {r.name: r for r in REPLICAS}
BY_ADDRESS = {r.address: r.name for r in REPLICAS}
GLOBAL_NAME = names.global_name(REGISTRY, ZONE)
# probes instances: name (also its log's and its events' source) -> address; the first uses the
# config's probes.listen and state_file, the others get --listen and --state-file
PROBES = {"probes": PROBES_ADDRESS, "probes-b": PROBES_B_ADDRESS}
ALL_ADDRESSES = (*PROBES.values(), DNS_ADDRESS) + tuple(r.address for r in REPLICAS)


@dataclass(frozen=True, slots=True)
class Timing:
    """Probe and DNS timings of a drill; `budget` is computed from the config these produce."""
    name: str
    interval: float
    timeout: float
    fall: int
    rise: int
    tm_ttl: int
    poll_interval: float
    health_ttl: float
    jitter: float = 0.1


DEFAULT = Timing("default", interval=2.0, timeout=1.0, fall=3, rise=2, tm_ttl=5, poll_interval=1.0, health_ttl=10.0)
AGGRESSIVE = Timing("aggressive", interval=1.0, timeout=0.8, fall=3, rise=2, tm_ttl=5, poll_interval=0.5,
                    health_ttl=6.0)


@dataclass(frozen=True, slots=True)
class Paths:
    """Files the lab uses (all under the drill's work directory)."""
    root: Path
    ca_cert: Path = field(init=False)
    state: Path = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ca_cert", self.root / "pki" / "ca.crt")
        object.__setattr__(self, "state", self.root / "state")

    @property
    def geotm_config(self) -> Path:
        return self.root / "geotm.yaml"

    @property
    def admin_token(self) -> Path:
        return self.root / "admin-token"

    def probes_state(self, instance: str) -> Path:
        return self.state / f"{instance}-state.json"

    def storage(self, replica: str) -> Path:
        """The replica's storage mount point (a tmpfs in the lab's mount namespace)."""
        return self.root / "storage" / replica

    def storage_root(self, replica: str) -> Path:
        """The registry's rootdirectory, one level below the mount point, so making the mount point
        unreadable makes the storage driver's own health check fail (it stats the rootdirectory)."""
        return self.storage(replica) / "registry"

    def registry_config(self, replica: str) -> Path:
        return self.root / "registries" / f"{replica}.yml"

    def cert(self, replica: str) -> Path:
        return self.root / "pki" / f"{replica}.crt"

    def key(self, replica: str) -> Path:
        return self.root / "pki" / f"{replica}.key"


def _seconds(value: float) -> str:
    return f"{value:g}s"


def probe_spec(timing: Timing, replica: ReplicaSpec, ca_file: str) -> dict:
    return {
        "interval": _seconds(timing.interval), "timeout": _seconds(timing.timeout), "jitter": timing.jitter,
        "fall": timing.fall, "rise": timing.rise,
        "checks": [
            {"kind": "oci", "scheme": "https", "port": REGISTRY_PORT, "host_header": replica.regional,
             "ca_file": ca_file, "write_canary": CANARY_REPOSITORY},
            {"kind": "distribution", "scheme": "http", "port": DEBUG_PORT},
        ],
    }


def geotm_config(timing: Timing, paths: Paths) -> dict:
    """The config dnsd and probes share (same schema as config/example.yaml)."""
    state = paths.state
    replicas = {}
    for priority, replica in enumerate(REPLICAS, start=1):
        replicas[replica.name] = {"location": replica.name, "addresses": [replica.address], "weight": 100,
                                  "priority": priority, "probe": probe_spec(timing, replica, str(paths.ca_cert))}
    return {
        "server": {"listen": [f"{DNS_ADDRESS}:53"]},
        "zone": {
            "name": ZONE,
            "soa": {"mname": "ns1", "rname": "hostmaster", "serial": "auto", "refresh": 3600, "retry": 600,
                    "expire": 604800, "negative_ttl": 30, "ttl": 3600},
            "nameservers": ["ns1"],
            "ns_ttl": 3600,
            "ttl": {"global": 300, "privatelink": 300, "traffic_manager": timing.tm_ttl, "regional": 300,
                    "data": 300, "replica": 10, "private": 10},
            "records": [{"name": "ns1", "type": "A", "ttl": 3600, "value": DNS_ADDRESS}],
        },
        "regions": [r.name for r in REPLICAS],
        "latency_ms": LATENCY_MS,
        "clients": {"default_region": "eastus", "networks": {NETWORK: "eastus"}},
        "registries": {REGISTRY: {"routing": "performance", "all_down": "fail_open", "regional_endpoints": True,
                                  "data_endpoints": True, "replicas": replicas}},
        "probes": {"listen": f"{PROBES_ADDRESS}:{PROBES_PORT}", "max_concurrent": 8,
                   "state_file": str(paths.probes_state("probes"))},
        "health": {"feeds": [f"http://{address}:{PROBES_PORT}/v1/health" for address in PROBES.values()],
                   "quorum": "majority",
                   "poll_interval": _seconds(timing.poll_interval), "ttl": _seconds(timing.health_ttl),
                   "state_file": str(state / "dnsd-health.json")},
        "admin": {"listen": f"{DNS_ADDRESS}:{ADMIN_PORT}", "token_file": str(paths.admin_token),
                  "public_metrics": True, "public_status_page": True,
                  "state_file": str(state / "dnsd-overrides.json")},
    }


def registry_config(replica: ReplicaSpec, paths: Paths, health_interval: float = 0.5, threshold: int = 2) -> dict:
    """A CNCF distribution (Debian docker-registry 2.8) config: filesystem storage with deletes (the
    write canary deletes its blob), TLS on :443, the debug server on :5001 and the storage-driver
    health check, so /debug/health (and every API call) reports a failing storage. Its interval is
    not in geotm's budget (the budget starts when the registry reports the fault), so it is kept well
    under the probe interval: a repaired storage answers again within half a second."""
    return {
        "version": 0.1,
        "log": {"level": "warn", "formatter": "json", "fields": {"service": "registry", "replica": replica.name}},
        "storage": {"filesystem": {"rootdirectory": str(paths.storage_root(replica.name))},
                    "delete": {"enabled": True}, "maintenance": {"uploadpurging": {"enabled": False}}},
        "http": {"addr": f"{replica.address}:{REGISTRY_PORT}", "secret": f"geotm-drill-{replica.name}",
                 "tls": {"certificate": str(paths.cert(replica.name)), "key": str(paths.key(replica.name))},
                 "debug": {"addr": f"{replica.address}:{DEBUG_PORT}"},
                 "headers": {"X-Content-Type-Options": ["nosniff"]}},
        "health": {"storagedriver": {"enabled": True, "interval": f"{round(health_interval * 1000)}ms",
                                     "threshold": threshold}},
    }
