"""Whether a server gives the answers geotm gives for the bench's names, asked with dig: the global
name's whole chain, regional and data names, NODATA, NXDOMAIN, SOA and NS (ECS and VNet-source
answers are reported, not required: only geotm has views)."""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from benchlib import ECS_SUBNET, VNET_SOURCE, ZoneModel


@dataclass
class DigAnswer:
    rcode: str
    flags: set[str]
    answer: list[tuple[str, int, str, str]]      # (owner, ttl, type, rdata)
    authority: list[tuple[str, int, str, str]]
    raw: str


def dig(port: int, name: str, qtype: str = "A", extra: list[str] | None = None) -> DigAnswer | None:
    argv = ["dig", "@127.0.0.1", "-p", str(port), name, qtype, "+norec", "+time=2", "+tries=2", *(extra or [])]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return None
    out = r.stdout
    mm = re.search(r"status: ([A-Z]+)", out)
    if not mm:
        return None
    flags = set((re.search(r"flags: ([a-z ]*);", out) or re.search("()", "")).group(1).split())
    sections: dict[str, list] = {"ANSWER": [], "AUTHORITY": []}
    cur = None
    for line in out.splitlines():
        hm = re.match(r";; ([A-Z]+) SECTION:", line)
        if hm:
            cur = hm.group(1)
            continue
        if not line.strip() or line.startswith(";"):
            if not line.strip():
                cur = None
            continue
        if cur in sections:
            parts = line.split(None, 4)
            if len(parts) == 5:
                sections[cur].append((parts[0].lower(), int(parts[1]), parts[3], parts[4]))
    return DigAnswer(mm.group(1), flags, sections["ANSWER"], sections["AUTHORITY"], out)


def check_global(m: ZoneModel, a: DigAnswer | None, fixed: str | None, reg: str) -> tuple[bool, str]:
    """The global name's chain: global -> privatelink -> tm -> (CNAME replica host -> A) or (A at tm).
    `fixed`: the replica that must be chosen, or None for a weighted pick (any replica)."""
    if a is None:
        return False, "no answer"
    if a.rcode != "NOERROR" or "aa" not in a.flags:
        return False, f"rcode {a.rcode} flags {sorted(a.flags)}"
    want = [(m.fqdn(m.global_name(reg)), "CNAME", m.fqdn(m.privatelink_name(reg))),
            (m.fqdn(m.privatelink_name(reg)), "CNAME", m.fqdn(m.tm_name(reg)))]
    got = [(o, t, d.lower()) for o, _, t, d in a.answer]
    if got[:2] != want:
        return False, f"chain starts {got[:2]}, want {want}"
    reps = {r.name: r for r in next(x for x in m.registries if x.name == reg).replicas}
    tail = got[2:]
    tm = m.fqdn(m.tm_name(reg))
    chosen = None
    if len(tail) == 2 and tail[0][:2] == (tm, "CNAME") and tail[1][1] == "A":
        for name, rep in reps.items():
            if tail[0][2] == m.fqdn(m.replica_host(reg, name)) and tail[1][0] == tail[0][2] \
                    and tail[1][2] in rep.addresses:
                chosen = name
    elif len(tail) == 1 and tail[0][:2] == (tm, "A"):      # gdnsd: DYNA at the tm name
        for name, rep in reps.items():
            if tail[0][2] in rep.addresses:
                chosen = name
    if chosen is None:
        return False, f"bad tail of chain {tail}"
    if fixed and chosen != fixed:
        return False, f"chose {chosen}, want {fixed}"
    return True, f"chain ok, replica {chosen} ({'fixed' if fixed else 'weighted pick'})"


def verify(m: ZoneModel, port: int, fixed: str | None, is_geotm: bool) -> tuple[bool, list[str]]:
    notes: list[str] = []
    ok = True
    reg = m.registries[0].name
    good, why = check_global(m, dig(port, m.fqdn(m.global_name(reg))), fixed, reg)
    notes.append(f"global A: {why}")
    ok &= good
    rep = m.registries[0].replicas[1]
    a = dig(port, m.fqdn(m.regional_name(reg, rep.name)))
    good = bool(a and a.rcode == "NOERROR" and [x[2] for x in a.answer] == ["CNAME", "A"]
                and a.answer[-1][3] in rep.addresses)
    notes.append(f"regional A: {'ok' if good else 'WRONG ' + (str(a.answer) if a else 'no answer')}")
    ok &= good
    a = dig(port, m.fqdn(m.data_name(reg, rep.name)))
    good = bool(a and a.rcode == "NOERROR" and a.answer and a.answer[-1][3] in rep.addresses)
    notes.append(f"data A: {'ok' if good else 'WRONG'}")
    ok &= good
    a = dig(port, m.fqdn(m.global_name(reg)), "AAAA")
    good = bool(a and a.rcode == "NOERROR" and not any(x[2] == "AAAA" for x in a.answer)
                and any(x[2] == "SOA" for x in a.authority) and any(x[2] == "CNAME" for x in a.answer))
    notes.append(f"AAAA NODATA after chain: {'ok' if good else 'WRONG'}")
    ok &= good
    a = dig(port, m.fqdn("nx0"))
    good = bool(a and a.rcode == "NXDOMAIN" and any(x[2] == "SOA" for x in a.authority))
    notes.append(f"NXDOMAIN: {'ok' if good else 'WRONG'}")
    ok &= good
    a = dig(port, m.fqdn("@"), "SOA")
    good = bool(a and a.rcode == "NOERROR" and a.answer and a.answer[0][2] == "SOA")
    notes.append(f"SOA: {'ok' if good else 'WRONG'}")
    ok &= good
    a = dig(port, m.fqdn("@"), "NS")
    good = bool(a and a.rcode == "NOERROR" and a.answer and a.answer[0][2] == "NS")
    notes.append(f"NS: {'ok' if good else 'WRONG'}")
    ok &= good
    # ECS and VNet source: geotm answers differently, the peers ignore both (reported, not required)
    a = dig(port, m.fqdn(m.global_name(reg)), "A", [f"+subnet={ECS_SUBNET}"])
    notes.append(f"with ECS {ECS_SUBNET}: final {a.answer[-1][3] if a and a.answer else '-'}")
    a = dig(port, m.fqdn(m.global_name(reg)), "A", ["-b", VNET_SOURCE])
    notes.append(f"from {VNET_SOURCE}: final {a.answer[-1][3] if a and a.answer else '-'}")
    return bool(ok), notes
