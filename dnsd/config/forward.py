"""The forward section: the upstream resolvers (a list, or a resolv.conf read now, without our own listen
addresses), the clients allowed to recurse (never everyone), the timeouts and the cache's bounds."""
from __future__ import annotations

from dnsd.config import keys
from dnsd.config.reader import Reader
from dnsd.config.upstreams import is_own, parse_upstream, read_resolv_conf
from dnsd.config.yamlnodes import Node
from dnsd.common.hostport import format_host_port
from dnsd.model import ForwardCache, ForwardSettings, ServerSettings

MAX_BYTES = 1 << 40  # a cache bound beyond any memory we would run in


def forward_section(r: Reader, node: Node | None, server: ServerSettings | None) -> ForwardSettings | None:
    """None when the section is absent (forwarding off) or wrong (its problems are in r). `server`:
    whose listen addresses are never an upstream (None when that section is broken itself)."""
    m = r.mapping(node, keys.FORWARD)
    if m is None:
        return None
    own = server.listen if server is not None else ()
    defaults = ForwardSettings()
    upstreams = _upstreams(r, m, own)
    clients = _clients(r, m.get("clients"), defaults)
    values = dict(try_timeout=r.duration(m.get("try_timeout"), defaults.try_timeout, 0.01),
                  deadline=r.duration(m.get("deadline"), defaults.deadline, 0.01),
                  max_in_flight=r.integer(m.get("max_in_flight"), 1, 1_000_000, defaults.max_in_flight))
    cache = _cache(r, m.get("cache"))
    if None not in values.values() and values["deadline"] < values["try_timeout"]:
        r.fail(m.get("deadline") or m, f"deadline {values['deadline']:g}s is shorter than try_timeout "
                                       f"{values['try_timeout']:g}s: no upstream would get its full try")
        return None
    if None in values.values() or None in (upstreams, clients, cache):
        return None
    return ForwardSettings(upstreams=tuple(upstreams), resolv_conf=r.file_name(m.get("resolv_conf")),
                           clients=clients, cache=cache, **values)


def _upstreams(r: Reader, m, own) -> list[tuple[str, int]] | None:
    """`upstreams: [HOST:PORT, ...]` or `resolv_conf: FILE` (its nameserver lines, read now)."""
    listed, resolv_conf = m.get("upstreams"), m.get("resolv_conf")
    if (listed is None) == (resolv_conf is None):
        r.fail(m, "give either 'upstreams' (a list of HOST:PORT) or 'resolv_conf' (a file with nameserver "
                  "lines, e.g. /etc/resolv.conf)" + (", not both" if listed is not None else ""))
        return None
    if resolv_conf is not None:
        path = r.file_name(resolv_conf)
        if path is None:
            return None
        try:
            found = read_resolv_conf(path, own)
        except OSError as err:
            r.fail(resolv_conf, f"cannot read {path}: {err.strerror or err}")
            return None
        if not found:
            r.fail(resolv_conf, f"{path} has no nameserver line other than dnsd's own listen addresses: "
                                "nothing to forward to")
            return None
        return found
    result: list[tuple[str, int]] = []
    items = r.one_or_many(listed)
    if not items:
        r.fail(listed, "list at least one upstream (HOST:PORT)")
    for item in items:
        parsed = r.scalar(item, lambda v: parse_upstream(str(v)),
                          "an upstream resolver's IP[:PORT] like 9.9.9.9, 127.0.0.1:5300 or [2620:fe::fe]:53")
        if parsed is None:
            continue
        if is_own(*parsed, own):
            r.fail(item, f"{format_host_port(*parsed)} is dnsd's own listen address: forwarding to it "
                         "would loop")
        elif parsed in result:
            r.fail(item, f"upstream {format_host_port(*parsed)} is listed twice")
        else:
            result.append(parsed)
    return result if len(result) == len(items) and result else None


def _clients(r: Reader, node: Node | None, defaults: ForwardSettings) -> tuple | None:
    if node is None:
        return defaults.clients
    items = r.one_or_many(node)
    if not items:
        r.fail(node, "list the networks allowed to recurse (absent: loopback only)")
        return None
    networks = []
    for item in items:
        network = r.network(item)
        if network is not None and network.prefixlen == 0:
            # an open resolver: anyone can aim amplified answers at a victim, or poison the cache
            r.fail(item, f"{network} is every address: geotm would be an open resolver, used for "
                         "amplification attacks and cache poisoning; list only the networks of the hosts "
                         "and containers that use it (e.g. the docker bridge 172.17.0.0/16)")
        elif network is not None:
            networks.append(network)
    return tuple(networks) if len(networks) == len(items) else None


def _cache(r: Reader, node: Node | None) -> ForwardCache | None:
    d = ForwardCache()
    if node is None:
        return d
    m = r.mapping(node, keys.FORWARD_CACHE)
    if m is None:
        return None
    values = dict(max_entries=r.integer(m.get("max_entries"), 1, 100_000_000, d.max_entries),
                  max_bytes=r.integer(m.get("max_bytes"), 65_536, MAX_BYTES, d.max_bytes),
                  min_ttl=r.ttl(m.get("min_ttl"), d.min_ttl), max_ttl=r.ttl(m.get("max_ttl"), d.max_ttl),
                  max_negative_ttl=r.ttl(m.get("max_negative_ttl"), d.max_negative_ttl),
                  serve_stale=r.duration(m.get("serve_stale"), d.serve_stale),
                  stale_answer_after=r.duration(m.get("stale_answer_after"), d.stale_answer_after))
    if None in values.values():
        return None
    if values["min_ttl"] > values["max_ttl"]:
        r.fail(m.get("min_ttl"), f"min_ttl {values['min_ttl']} is above max_ttl {values['max_ttl']}")
        return None
    return ForwardCache(**values)
