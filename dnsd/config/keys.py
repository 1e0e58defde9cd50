"""The YAML keys each config mapping allows, read from the model's dataclass fields (dnsd.model): the one
place that says where a key is spelt unlike its field and which fields no key of the mapping sets."""
from __future__ import annotations

from dataclasses import fields
from typing import Mapping

from dnsd.records import RR
from dnsd.model import (AdminSettings, AllDownPolicy, ClusterSettings, Config, EtcdSettings, EtcdTls, FeedAccess,
                        ForwardCache, ForwardSettings,
                        HealthFeedSettings, NameTTLs, PrivateEndpoints, ProbeCheck, ProbeSpec, ProbesSettings,
                        RateLimitSettings, Registry, Replica, ServerSettings, Soa, Topology, View, Webhook, Zone)


def keys_of(model: type, renamed: Mapping[str, str | tuple[str, ...]] | None = None,
            not_keys: tuple[str, ...] = ()) -> tuple[str, ...]:
    """model's fields in their order as keys: renamed where the YAML spells one otherwise (a field may
    be read from several keys, several fields from one), without the fields no key here sets."""
    renamed = renamed or {}
    names = [f.name for f in fields(model)]
    stale = sorted((set(renamed) | set(not_keys)) - set(names))
    if stale:  # a field renamed in the model and not here: fail at import, not with a wrong key list
        raise TypeError(f"{model.__name__} has no field {', '.join(stale)}")
    keys: list[str] = []
    for name in names:
        if name in not_keys:
            continue
        spelt = renamed.get(name, name)
        for key in (spelt,) if isinstance(spelt, str) else spelt:
            if key not in keys:
                keys.append(key)
    return tuple(keys)


def key_by_field(model: type, renamed: Mapping[str, str]) -> dict[str, str]:
    """field name -> its key, for a mapping whose fields are all read the same way."""
    return {f.name: renamed.get(f.name, f.name) for f in fields(model)}


# -- the document ---------------------------------------------------------------------------------

TOP = keys_of(Config, not_keys=("source", "digest"),  # the loader sets them: the file's name and hash
              renamed={"topology": ("regions", "latency_ms", "clients")})  # topology is spread over three keys
CLIENTS = keys_of(Topology, not_keys=("regions", "latency_ms"),  # top-level keys (TOP)
                  renamed={"client_networks": "networks"})

# -- zone -----------------------------------------------------------------------------------------

ZONE = keys_of(Zone, renamed={"ttls": "ttl"})
SOA = keys_of(Soa, not_keys=("auto_serial",))  # set by `serial: auto`, not a key of its own
NAME_TTLS_RENAMED = {"global_name": "global"}  # `global` is a Python keyword
NAME_TTLS = keys_of(NameTTLs, renamed=NAME_TTLS_RENAMED)
RECORD = keys_of(RR, renamed={"rtype": "type",
                              "rdata": ("value", "values")})  # rdata as text: one value, or a list of them

# -- registries -----------------------------------------------------------------------------------

REGISTRY = keys_of(Registry, not_keys=("name",))  # the key it is listed under
REPLICA = keys_of(Replica, not_keys=("name",))  # the key it is listed under
ALL_DOWN = keys_of(AllDownPolicy, renamed={"mode": "policy"})
CHECK = keys_of(ProbeCheck)
PROBE_TIMING = keys_of(ProbeSpec, not_keys=("checks",))  # beside `checks`, or beside a lone check's keys
PROBE = keys_of(ProbeSpec)

# -- views ----------------------------------------------------------------------------------------

VIEW = keys_of(View, not_keys=("name",),  # the key it is listed under
               renamed={"endpoints": "private_endpoints"})
PRIVATE_ENDPOINTS = keys_of(PrivateEndpoints, renamed={"global_addresses": "global"})

# -- server, admin, probes, health ----------------------------------------------------------------

SERVER = keys_of(ServerSettings)
RATE_LIMIT = keys_of(RateLimitSettings)
ADMIN = keys_of(AdminSettings)
PROBES = keys_of(ProbesSettings, renamed={"tls_cert_file": "tls", "tls_key_file": "tls"})  # tls: {cert_file, key_file}
PROBES_TLS = tuple(f.name.removeprefix("tls_") for f in fields(ProbesSettings) if f.name.startswith("tls_"))
WEBHOOK = keys_of(Webhook)
FEED_ACCESS = keys_of(FeedAccess)
HEALTH = keys_of(HealthFeedSettings, not_keys=("feed_access",),  # given per feed, in `feeds` (FEED)
                 renamed={"access": FEED_ACCESS})  # for every feed: its keys beside `feeds`
FEED = ("url",) + FEED_ACCESS  # one of `feeds` as a mapping: the URL (a string of `feeds`) and its own access

# -- forward --------------------------------------------------------------------------------------

FORWARD = keys_of(ForwardSettings)
FORWARD_CACHE = keys_of(ForwardCache)

# -- cluster --------------------------------------------------------------------------------------

CLUSTER = keys_of(ClusterSettings)
ETCD = keys_of(EtcdSettings)
ETCD_TLS = keys_of(EtcdTls)
