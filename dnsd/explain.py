"""`dnsd explain`: the chain a client would get for a name, and why (view, policy, candidates, choice)."""
from __future__ import annotations

import ipaddress

from dnsd import records
from dnsd.answer import RCODE_NAMES, Answer
from dnsd.records import normalize_name
from dnsd.resolve import resolve
from dnsd.runtime import ClientContext, Snapshot, choose, network_of, view_of



def client_context(client: str, ecs: str | None) -> ClientContext:
    """--client ADDRESS and optional --ecs SUBNET (as a resolver would send it)."""
    if ecs:
        network = ipaddress.ip_network(ecs, strict=False)
        return ClientContext(network.max_prefixlen, int(network.network_address), network.prefixlen)
    return ClientContext.of(str(ipaddress.ip_address(client)))


def explain(snapshot: Snapshot, qname: str, qtype: int, client: ClientContext) -> tuple[Answer, str]:
    compiled = snapshot.compiled
    config = snapshot.config
    view = view_of(compiled, client)
    hops: list[int] = []

    def chooser(registry_index: int) -> tuple[int | None, str]:
        hops.append(registry_index)
        return choose(snapshot, client, registry_index)

    result = resolve(compiled.zd, view, normalize_name(qname), qtype, chooser)
    family = "IPv4" if client.bits == 32 else "IPv6"
    address = ipaddress.ip_address(client.address) if client.bits == 32 else ipaddress.IPv6Address(client.address)
    source = (f"ECS {address}/{client.source_prefix}" if client.source_prefix is not None
              else f"source {address}")
    lines = [f"question: {normalize_name(qname)}. {records.type_name(qtype)} from {family} client ({source})",
             f"view: {compiled.zd.views[view]}" + (" (client in no VNet view)" if view == 0 else "")]
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
