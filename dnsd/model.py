"""The validated config as frozen values: Zone, Registry, Replica, Topology, View, ForwardSettings. No I/O,
no runtime state."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from dnsd.records import RR

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ROUTING_METHODS = ("performance", "weighted", "priority")
ALL_DOWN_POLICIES = ("fail_open", "fallback", "servfail")


def frozen_map(mapping: Mapping) -> Mapping:
    return MappingProxyType(dict(mapping))


def default_of(cls: type, name: str) -> object:
    """The default of one field of a model class: the config builders take every default from here."""
    return cls.__dataclass_fields__[name].default  # type: ignore[attr-defined]


RECORD_TTL = 3600  # a static record's TTL when it gives none
REPLICA_WEIGHT = 100  # a replica's weight when it gives none (weighted routing)


@dataclass(frozen=True, slots=True)
class Soa:
    mname: str
    rname: str
    serial: int
    refresh: int = 3600
    retry: int = 600
    expire: int = 604800
    negative_ttl: int = 60  # the SOA MINIMUM field: how long resolvers cache NXDOMAIN/NODATA (RFC 2308)
    ttl: int = 3600
    auto_serial: bool = False  # `serial: auto`: the load time, kept by a reload of the same file (config.zone)


@dataclass(frozen=True, slots=True)
class NameTTLs:
    """TTL per kind of generated name (see dnsd.names)."""

    global_name: int = 300
    privatelink: int = 300
    traffic_manager: int = 30
    traffic_manager_short: int = 5  # while a serving replica is suspect or recovering (<= traffic_manager)
    regional: int = 300
    data: int = 300
    replica: int = 10
    private: int = 10


@dataclass(frozen=True, slots=True)
class Zone:
    name: str  # canonical: lower case, no trailing dot
    soa: Soa
    nameservers: tuple[str, ...]
    ttls: NameTTLs
    records: tuple[RR, ...]  # static records, served as given
    ns_ttl: int = 3600


PROBE_KINDS = ("oci", "distribution", "harbor", "http", "https", "tcp")


@dataclass(frozen=True, slots=True)
class StatusRange:
    low: int
    high: int


# Per-kind defaults of a check. Only ProbeCheck applies them: the config builder leaves an absent key
# out and probes runs the check exactly as built, so a value that is set is never second-guessed.
CHECK_DEFAULT_PATHS = {"oci": "/v2/", "distribution": "/debug/health", "harbor": "/api/v2.0/health"}
CHECK_DEFAULT_EXPECT = {"oci": (StatusRange(200, 299), StatusRange(401, 401))}  # 401: alive, auth required
DEFAULT_EXPECT = (StatusRange(200, 299),)


@dataclass(frozen=True, slots=True)
class ProbeCheck:
    """One deep-health check of a replica. Declared in the shared config, run by probes only."""

    kind: str  # one of PROBE_KINDS
    address: str  # IP or host name to connect to (may differ from the addresses we answer with)
    port: int
    scheme: str  # "http" or "https" (not used by tcp)
    host_header: str | None = None  # Host (and TLS SNI) to send; None: the address
    path: str = ""  # "": the kind's default (CHECK_DEFAULT_PATHS, else "/")
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    expect_status: tuple[StatusRange, ...] = ()  # e.g. "200-299,401"; (): the kind's default (see above)
    body_contains: str | None = None
    json_path: str | None = None  # dotted path into a JSON body, e.g. "status" or "components.0.status"
    json_equals: str | None = None  # the value expected there (compared as text)
    tls_verify: bool = True
    ca_file: str | None = None
    canary_manifest: str | None = None  # oci: "<repo>:<tag>" whose manifest is HEADed to prove storage serves
    canary_blob: str | None = None  # oci: "<repo>@sha256:<hex>" whose blob is HEADed
    write_canary: str | None = None  # oci: a repository where a blob upload is started, written, deleted
    components: tuple[str, ...] = ()  # harbor: components that matter (empty: all)

    def __post_init__(self) -> None:
        if not self.path:
            object.__setattr__(self, "path", CHECK_DEFAULT_PATHS.get(self.kind, "/"))
        if not self.expect_status:
            object.__setattr__(self, "expect_status", CHECK_DEFAULT_EXPECT.get(self.kind, DEFAULT_EXPECT))

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{host}:{self.port}{self.path}"

    def describe(self) -> str:
        return f"{self.kind} {self.address}:{self.port}" if self.kind == "tcp" else f"{self.kind} {self.url}"


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """How probes judges one replica: every check must pass in a round; fall/rise count rounds."""

    checks: tuple[ProbeCheck, ...]
    interval: float = 5.0  # seconds between rounds
    jitter: float = 0.1  # fraction of interval added at random, so probes do not move in lockstep
    timeout: float = 2.0  # seconds for one whole round
    fall: int = 3  # consecutive failed rounds before Degraded
    rise: int = 2  # consecutive good rounds before Online again


@dataclass(frozen=True, slots=True)
class Replica:
    name: str  # DNS label, used in regional/data names
    location: str  # a region of Topology.regions
    host: str  # the name the traffic-manager hop points at (in zone: we serve its addresses)
    addresses: tuple[IPAddress, ...]  # empty when host is outside our zone
    weight: int
    priority: int  # lower is preferred
    global_routing: bool  # False: skipped for the global name, regional/data names still answer
    probe: ProbeSpec | None = None  # None: never probed, always Online


@dataclass(frozen=True, slots=True)
class AllDownPolicy:
    """What the global name answers when every globally routed replica is degraded."""

    mode: str  # fail_open: answer as if all were healthy; fallback: always `replica`; servfail
    replica: str | None = None


@dataclass(frozen=True, slots=True)
class Registry:
    name: str
    routing: str  # one of ROUTING_METHODS
    all_down: AllDownPolicy
    regional_endpoints: bool
    data_endpoints: bool
    replicas: tuple[Replica, ...]

    def replica(self, name: str) -> Replica:
        for replica in self.replicas:
            if replica.name == name:
                return replica
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class ClientNetwork:
    network: IPNetwork
    region: str


@dataclass(frozen=True, slots=True)
class Coordinates:
    """Where a region is on the globe (degrees), for placing GeoIP clients by great-circle distance."""

    latitude: float
    longitude: float


CONTINENT_CODES = ("AF", "AN", "AS", "EU", "NA", "OC", "SA")  # as GeoIP databases spell them


@dataclass(frozen=True, slots=True)
class GeoIPSettings:
    """clients.geoip: client regions from a GeoIP database (MaxMind DB format, City or Country). A
    client's record goes to the region its country, else its continent, is listed under, else to the
    region nearest its coordinates; no record (or no usable one): default_region."""

    database: str  # the .mmdb file (relative paths: from the config file's folder)
    countries: Mapping[str, str] = field(default_factory=lambda: frozen_map({}))  # ISO code -> region
    continents: Mapping[str, str] = field(default_factory=lambda: frozen_map({}))  # CONTINENT_CODES -> region
    mark: str = ""  # where the config names the database (file:line:column), for problems found reading it


@dataclass(frozen=True, slots=True)
class Topology:
    """Where clients are and how far regions are from each other: the inputs of performance routing."""

    regions: tuple[str, ...]
    latency_ms: Mapping[tuple[str, str], float]  # symmetric, (a, a) = 0
    client_networks: tuple[ClientNetwork, ...]
    default_region: str | None  # for clients in no client network (and, with geoip, in no database record)
    coordinates: Mapping[str, Coordinates] = field(default_factory=lambda: frozen_map({}))  # region -> where
    geoip: GeoIPSettings | None = None  # None: client networks only

    def latency(self, a: str, b: str) -> float:
        return self.latency_ms[(a, b)]


@dataclass(frozen=True, slots=True)
class PrivateEndpoints:
    """One registry's private IPs inside one VNet: 1 global + N data + N regional."""

    global_addresses: tuple[IPAddress, ...]
    data: Mapping[str, tuple[IPAddress, ...]]  # replica name -> addresses
    regional: Mapping[str, tuple[IPAddress, ...]]


@dataclass(frozen=True, slots=True)
class View:
    """A VNet's answers. A query gets the view whose sources hold its packet's source address; ECS
    chooses instead only when the packet comes from one of the view's trusted resolvers."""

    name: str
    sources: tuple[IPNetwork, ...]  # the VNet's addresses (packet source, or ECS from a trusted resolver)
    endpoints: Mapping[str, PrivateEndpoints]  # registry name -> its private IPs here
    trusted_resolvers: tuple[IPNetwork, ...] = ()  # resolvers whose ECS may choose this view


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """Response rate limiting of UDP answers (server.rate_limit), as BIND's rate-limit and Knot's
    mod-rrl: a token bucket per client prefix and response class; TCP answers are never limited."""

    responses_per_second: int = 20  # identical answers (same qname, qtype, rcode) per client prefix
    nxdomains_per_second: int | None = None  # NXDOMAIN per zone and prefix; None: responses_per_second
    errors_per_second: int | None = None  # REFUSED/SERVFAIL/FORMERR/... per prefix; None: responses_per_second
    slip: int = 2  # every Nth limited answer goes out as an empty TC=1 reply; 0: drop them all
    ipv4_prefix_length: int = 24
    ipv6_prefix_length: int = 56
    exempt: tuple[IPNetwork, ...] = ()  # sources never limited
    table_size: int = 50_000  # buckets kept at most; with the front cache about 700 bytes each (35 MB)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    listen: tuple[tuple[str, int], ...] = (("127.0.0.1", 5353),)
    edns_udp_size: int = 1232
    tcp_idle_timeout: float = 10.0
    tcp_idle_timeout_under_load: float = 1.0  # from 3/4 of tcp_max_connections on (RFC 7766 6.2.3)
    tcp_max_connections: int = 1024  # lowered at start when the open-files limit cannot hold it
    tcp_max_connections_per_source: int = 16  # one source: an IPv4 address / IPv6 prefix, as below
    tcp_source_prefix_v4: int = 32
    tcp_source_prefix_v6: int = 56
    fd_reserve: int = 128  # descriptors DNS clients never get: health feed, admin API, state files
    rate_limit: RateLimitSettings | None = None  # None (the key absent): no response rate limiting


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    timeout: float = 2.0
    retries: int = 5  # attempts after the first, with exponential backoff
    backoff: float = 1.0  # first retry delay in seconds, doubled each time
    secret_file: str | None = None  # shared secret: each POST carries X-Geotm-Signature (HMAC-SHA256 of the body)


@dataclass(frozen=True, slots=True)
class ProbesSettings:
    """The probe service: where it serves verdicts and how much load it may put on replicas."""

    listen: tuple[str, int] = ("127.0.0.1", 8053)
    max_concurrent: int = 32  # rounds running at once across all replicas
    webhook: Webhook | None = None
    state_file: str | None = None  # verdicts kept across probe restarts
    tls_cert_file: str | None = None  # serve HTTPS with this certificate chain (PEM)...
    tls_key_file: str | None = None  # ...and its private key
    token_file: str | None = None  # /v1/health needs `Authorization: Bearer <token from this file>`
    public_metrics: bool = True  # /metrics without the token (/healthz is always open)
    registry_credentials: str | None = None  # docker config.json (`auths`) for registries that require auth


@dataclass(frozen=True, slots=True)
class FeedAccess:
    """How dnsd reaches one probes feed: the CA that signs its certificate, the token it requires."""

    ca_file: str | None = None  # PEM bundle for https feeds; None: the system CAs (always verified)
    token_file: str | None = None  # sent as `Authorization: Bearer <token>`


@dataclass(frozen=True, slots=True)
class HealthFeedSettings:
    """How dnsd learns health: which probes instances, how they vote, when their word expires."""

    feeds: tuple[str, ...] = ()  # URLs of probes' /v1/health; empty: no probing, everything Online
    quorum: int = 0  # degraded when at least this many feeds say so; 0 = a majority of the answering feeds
    poll_interval: float = 1.0
    ttl: float = 30.0  # a verdict older than this expires: the replica counts as Online (fail open)
    state_file: str | None = None  # last good snapshot, loaded at start so a restart forgets nothing
    access: FeedAccess = field(default_factory=FeedAccess)  # for every feed...
    feed_access: Mapping[str, FeedAccess] = field(default_factory=lambda: frozen_map({}))  # ...or per feed URL

    def votes_needed(self, answering: int) -> int:
        """Degraded votes needed when `answering` feeds are fresh. A majority counts only those: a
        silent probes instance is no vote for "online", so losing one of two keeps a failover
        (the other decides alone) instead of sending clients back to a broken replica."""
        return self.quorum or (answering // 2 + 1)

    def access_for(self, url: str) -> FeedAccess:
        return self.feed_access.get(url, self.access)


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """dnsd's admin API: status, explain, drains and overrides, reload, metrics, status page."""

    listen: tuple[str, int] | None = ("127.0.0.1", 8054)  # None: no admin API
    token_file: str | None = None  # bearer token read from this file...
    token_env: str | None = "GEOTM_ADMIN_TOKEN"  # ...or from this environment variable
    public_metrics: bool = True  # /metrics without a token (Prometheus scrapes on loopback)
    public_status_page: bool = True  # the read-only HTML status page without a token
    state_file: str | None = None  # overrides and the audit log, kept across restarts


LOOPBACK_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True, slots=True)
class ForwardCache:
    """forward.cache: how much the forwarding cache holds and how long (dnsd.forward.cache)."""

    max_entries: int = 10_000
    max_bytes: int = 16 * 1024 * 1024  # stored messages plus a fixed overhead per entry
    min_ttl: int = 0  # floor of every cached TTL
    max_ttl: int = 3600  # cap of every cached TTL
    max_negative_ttl: int = 1800  # cap of NXDOMAIN/NODATA lifetimes (RFC 2308: min(SOA TTL, MINIMUM))
    serve_stale: float = 0.0  # seconds past expiry an answer may stand in (TTL 30) while every upstream fails; 0: off
    # With serve_stale on: a client whose lookup has not finished this long after it asked gets the
    # stale answer now, while the lookup goes on and refreshes the cache (RFC 8767 section 5's client
    # response timer, 1.8 s suggested there)
    stale_answer_after: float = 1.8


@dataclass(frozen=True, slots=True)
class ForwardSettings:
    """The `forward:` section: names outside our zone resolved through upstream resolvers, with a cache
    (dnsd.forward reads these values as they are). Absent: off, every outside name is REFUSED."""

    upstreams: tuple[tuple[str, int], ...] = ()  # (IP, port) in config order; from resolv_conf when given
    resolv_conf: str | None = None  # the file the upstreams were read from (its nameserver lines)
    # Sources that may have outside names resolved; everyone else gets REFUSED for them, so geotm is
    # never an open resolver (amplification, cache poisoning). Loopback unless the config lists more.
    clients: tuple[IPNetwork, ...] = LOOPBACK_NETWORKS
    try_timeout: float = 1.0  # seconds one upstream gets (the TCP retry after TC=1 gets as long again)
    deadline: float = 3.0  # seconds for the whole lookup, every upstream and retry included
    max_in_flight: int = 1000  # distinct lookups under way upstream; more -> stale or SERVFAIL
    cache: ForwardCache = field(default_factory=ForwardCache)


@dataclass(frozen=True, slots=True)
class EtcdTls:
    """cluster.etcd.tls: how dnsd and probes trust etcd (https endpoints) and prove who they are."""

    ca_file: str | None = None  # PEM bundle that signs etcd's certificates; None: the system CAs
    cert_file: str | None = None  # our client certificate, when etcd requires one...
    key_file: str | None = None  # ...and its key


@dataclass(frozen=True, slots=True)
class EtcdSettings:
    """cluster.etcd: where the shared truth lives (dnsd.cluster)."""

    endpoints: tuple[str, ...] = ()  # client URLs, e.g. http://10.0.0.1:2379; tried in order
    prefix: str = "/geotm/"  # every key of this deployment starts with it (several may share one etcd)
    tls: EtcdTls | None = None  # None: plain http endpoints
    username: str | None = None  # etcd auth (a role with read/write on prefix)...
    password_file: str | None = None  # ...and its password, read from this file
    timeout: float = 2.0  # seconds one request may take: a write etcd cannot commit by then is refused


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """The `cluster:` section: many dnsd and probes instances share overrides, verdicts and their own
    registrations through etcd. Absent: one machine, each dnsd with its own state files."""

    etcd: EtcdSettings
    # each dnsd's registration (instances/<instance>) is leased this long: a dead dnsd leaves the list
    # after it; also the bound on a live one's last sync before `dnsd status` flags it out of sync
    member_ttl: float = 10.0


@dataclass(frozen=True, slots=True)
class Config:
    source: str  # file it was loaded from
    digest: str  # sha256 of the file text: the running config's version
    server: ServerSettings
    zone: Zone
    topology: Topology
    registries: tuple[Registry, ...]
    views: tuple[View, ...] = field(default=())
    probes: ProbesSettings = field(default_factory=ProbesSettings)
    health: HealthFeedSettings = field(default_factory=HealthFeedSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    forward: ForwardSettings | None = None  # None (the section absent): names outside the zone are REFUSED
    cluster: ClusterSettings | None = None  # None (the section absent): no etcd, local state files only

    def registry(self, name: str) -> Registry:
        for registry in self.registries:
            if registry.name == name:
                return registry
        raise KeyError(name)
