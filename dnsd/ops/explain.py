"""`dnsd explain`: the chain a client would get for a name, and why (view, policy, candidates, choice);
for a name outside the zone, what forwarding does with it (upstreams in order, cache state, or the
refusal of a client not allowed to recurse)."""
from __future__ import annotations

import ipaddress

from dnsd import names, records
from dnsd.answers.answer import RCODE_NAMES, Answer
from dnsd.common.hostport import format_host_port
from dnsd.forward import Forwarder
from dnsd.records import normalize_name
from dnsd.answers.resolve import resolve
from dnsd.routing.netmatch import address_key
from dnsd.serving.runtime import ClientContext, Snapshot, choose, network_of, view_choice


def client_context(client: str, ecs: str | None) -> ClientContext:
    """--client ADDRESS (the packet's source: a client, or the resolver asking for it) and optional
    --ecs SUBNET (as that resolver would send it)."""
    source = str(ipaddress.ip_address(client))
    if ecs:
        network = ipaddress.ip_network(ecs, strict=False)
        bits, address = address_key(source)
        return ClientContext(network.max_prefixlen, int(network.network_address), network.prefixlen, bits, address)
    return ClientContext.of(source)


def _address(bits: int, value: int) -> str:
    return str(ipaddress.IPv4Address(value) if bits == 32 else ipaddress.IPv6Address(value))


def _view_reason(client: ClientContext, view: int, by_ecs: bool) -> str:
    """Why the client got this view, in the words of the rule in runtime.view_choice."""
    source = _address(client.source_bits, client.source_address)
    ecs = (f"ECS {_address(client.bits, client.address)}/{client.source_prefix}"
           if client.source_prefix is not None else None)
    if by_ecs:
        if view:
            return f"{ecs} from {source}, a trusted resolver of this view"
        return f"{ecs} from trusted resolver {source} is in no view that trusts it"
    where = f"source address {source} is in its sources" if view else f"source address {source} is in no view"
    if ecs and client.source_prefix:
        where += f"; {ecs} is ignored for the view: {source} is no view's trusted resolver"
    return where


def forwarding(snapshot: Snapshot, qname: str, qtype: int, client: ClientContext,
               forwarder: Forwarder | None = None) -> dict | None:
    """What forwarding does with this question (JSON-able), or None when it does not apply: forwarding
    off, or the name is ours. forwarder: the running one, for its upstream order (SRTT) and its cache;
    None: from the config alone."""
    settings = snapshot.config.forward
    name = normalize_name(qname)
    if settings is None or names.is_subdomain(name, snapshot.config.zone.name):
        return None
    source = _address(client.source_bits, client.source_address)
    info: dict = {"client": source, "clients": [str(network) for network in settings.clients]}
    if forwarder is None:
        info["allowed"] = any(ipaddress.ip_address(source) in network for network in settings.clients)
        info["upstreams"] = [format_host_port(host, port) for host, port in settings.upstreams]
        return info
    described = forwarder.describe(name, qtype)
    info.update(allowed=forwarder.allows(source), upstreams=[address for address, _ in described.upstreams],
                srtt_ms=dict(described.upstreams), cached=described.cached, ttl_left=described.ttl_left,
                stale=described.stale, negative=described.negative,
                rcode=RCODE_NAMES.get(described.rcode, described.rcode) if described.rcode is not None else None)
    return info


def forwarding_lines(info: dict) -> list[str]:
    """forwarding()'s verdict in words: "forwarded to A, B, cached for N s" and the like."""
    if not info["allowed"]:
        return [f"forwarding: refused for this client: {info['client']} is not in forward.clients "
                f"({', '.join(info['clients'])}); it gets REFUSED, as without forwarding"]
    order = ", ".join(info["upstreams"]) or "no upstream (every lookup fails: SERVFAIL)"
    if "cached" not in info:
        return [f"forwarding: would be used: forwarded to {order} (in config order; the running dnsd "
                "tries the lowest SRTT first: --live shows its order and its cache)"]
    if info["cached"]:
        kind = "negative: " if info["negative"] else ""
        state = f"cached for {info['ttl_left']} s ({kind}{info['rcode']})"
    elif info["stale"]:
        state = "stale: expired, served (TTL 30) only while every upstream fails"
    else:
        state = "not cached: the next query goes upstream"
    srtt = ", ".join(f"{address} {ms:g} ms" if ms else f"{address} not measured yet"
                     for address, ms in info["srtt_ms"].items())
    return [f"forwarding: forwarded to {order}, {state}", f"  upstreams by SRTT, the first tried first: {srtt}"]


def explain(snapshot: Snapshot, qname: str, qtype: int, client: ClientContext,
            forwarder: Forwarder | None = None) -> tuple[Answer, str]:
    """forwarder: the running one (explain --live), for a name outside the zone; see forwarding()."""
    compiled = snapshot.compiled
    config = snapshot.config
    view, by_ecs = view_choice(compiled, client)
    hops: list[int] = []

    def chooser(registry_index: int) -> tuple[int | None, str]:
        hops.append(registry_index)
        return choose(snapshot, client, registry_index)

    result = resolve(compiled.zd, view, normalize_name(qname), qtype, chooser)
    family = "IPv4" if client.bits == 32 else "IPv6"
    address = _address(client.bits, client.address)
    source = (f"ECS {address}/{client.source_prefix}" if client.source_prefix is not None
              else f"source {address}")
    lines = [f"question: {normalize_name(qname)}. {records.type_name(qtype)} from {family} client ({source})",
             f"view: {compiled.zd.views[view]}", f"  why: {_view_reason(client, view, by_ecs)}"]
    network = network_of(compiled, client)
    networks = config.topology.client_networks
    if network < len(networks):
        lines.append(f"client region: {networks[network].region} (client network {networks[network].network})")
    else:
        lines.append(f"client region: {config.topology.default_region or 'none'} (default: in no client network)")
    for registry_index in dict.fromkeys(hops):
        plan = snapshot.plans[registry_index]
        registry = plan.registry
        chosen, _ = choose(snapshot, client, registry_index)
        region = (networks[network].region if network < len(networks) else config.topology.default_region)
        lines.append(f"registry {registry.name}: routing {registry.routing}, all-down policy "
                     f"{registry.all_down.mode}{' (ACTIVE)' if plan.all_down else ''}")
        lines.append("  candidates:")
        for index, replica in enumerate(registry.replicas):
            health = snapshot.health.of(registry.name, replica.name)
            status = health.status.value if replica.global_routing else "global routing off"
            latency = (f"{config.topology.latency(region, replica.location):g} ms"
                       if region and (region, replica.location) in config.topology.latency_ms else "-")
            mark = "  <- chosen" if index == chosen else ""
            lines.append(f"    {replica.name:<16} {status:<20} {replica.location:<16} latency {latency:<8} "
                         f"weight {replica.weight:<5} priority {replica.priority}{mark}")
        lines.append(f"  rule: {plan.reason}")
    forwarded = forwarding(snapshot, qname, qtype, client, forwarder)
    if forwarded is not None:
        lines += forwarding_lines(forwarded)
    if forwarded is not None and forwarded["allowed"]:
        lines.append("answer: the upstream's (RA set, AA clear: geotm does not own the data, nor validates it)")
    else:
        lines.append(f"answer: {RCODE_NAMES.get(result.rcode, result.rcode)}")
    for section, rrs in (("answer", result.answer), ("authority", result.authority),
                         ("additional", result.additional)):
        for rr in rrs:
            lines.append(f"  {section:<10} {rr.to_text()}")
    lines.append("steps:")
    lines += [f"  {step}" for step in result.trace]
    return result, "\n".join(lines)
