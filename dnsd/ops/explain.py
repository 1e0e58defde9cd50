"""`dnsd explain`: the chain a client would get for a name, and why (view, policy, candidates, choice)."""
from __future__ import annotations

import ipaddress

from dnsd import records
from dnsd.answers.answer import RCODE_NAMES, Answer
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


def explain(snapshot: Snapshot, qname: str, qtype: int, client: ClientContext) -> tuple[Answer, str]:
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
    lines.append(f"answer: {RCODE_NAMES.get(result.rcode, result.rcode)}")
    for section, rrs in (("answer", result.answer), ("authority", result.authority),
                         ("additional", result.additional)):
        for rr in rrs:
            lines.append(f"  {section:<10} {rr.to_text()}")
    lines.append("steps:")
    lines += [f"  {step}" for step in result.trace]
    return result, "\n".join(lines)
