"""Test helpers: the example config as data and as files (isolated, or probed for real on loopback),
build engines from config text or dicts, ask them real DNS messages (dnspython), and render replies in
zone-file syntax so cases read like zone files."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import yaml

from dnsd.common.children import free_port
from dnsd.config import parse_config_text, read_document
from dnsd.routing.health import HealthSnapshot
from dnsd.serving.runtime import QueryEngine, new_snapshot

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "example.yaml"


def example_dict() -> dict:
    return read_document(EXAMPLE)


def isolated_example(tmp_path, **sections) -> Path:
    """The example config written under tmp_path with every state file there too (never the
    developer's var/), no probes feed unless given, and an admin token of the test's own."""
    data = example_dict()
    data["probes"]["state_file"] = str(tmp_path / "probes-state.json")
    data["health"] = {"state_file": str(tmp_path / "dnsd-health.json")}
    token = tmp_path / "admin-token"
    token.write_text("test-admin-token\n")
    data["admin"] = {**data["admin"], "token_file": str(token), "state_file": str(tmp_path / "overrides.json")}
    data.update(sections)
    path = tmp_path / "geotm.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def probed_example(path: Path, probes_port: int, health: dict, probes: dict | None = None, poll: float = 0.2,
                   ttl: float = 30.0) -> Path:
    """The example config written to `path` for a real probes and dnsd on loopback: every replica probed
    over TCP each 200 ms (fall 1, rise 1), contoso/eastus on a closed port (degraded after one round),
    the others on the probes port itself (alive); probes listening there with `probes` added; dnsd
    polling every `poll` s, verdicts kept `ttl` s, with `health` added; no admin section."""
    data = example_dict()
    closed = free_port()
    for registry_name, registry in data["registries"].items():
        for name, replica in registry["replicas"].items():
            port = closed if (registry_name, name) == ("contoso", "eastus") else probes_port
            replica["probe"] = {"kind": "tcp", "address": "127.0.0.1", "port": port, "interval": "200ms",
                                "timeout": "150ms", "fall": 1, "rise": 1}
    data["probes"] = {"listen": f"127.0.0.1:{probes_port}", **(probes or {})}
    data["health"] = {"poll_interval": f"{poll:g}s", "ttl": f"{ttl:g}s", **health}
    data.pop("admin", None)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def config_from(data: dict | str, filename: str = "test.yaml"):
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    return parse_config_text(text, filename)


def engine_from(data: dict | str | None = None, health: HealthSnapshot | None = None) -> QueryEngine:
    config = config_from(example_dict() if data is None else data)
    return QueryEngine(new_snapshot(config, health))


def variant(**changes) -> dict:
    """The example config with dotted-path changes: variant(**{"registries.contoso.routing": "weighted"})."""
    data = copy.deepcopy(example_dict())
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = data
        for key in parents:
            node = node[key]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return data


DELETE = object()


def make_query(name: str, qtype: str = "A", *, ecs: str | None = None, edns: bool = True,
               payload: int = 1232, qid: int | None = None) -> dns.message.Message:
    options = []
    if ecs:
        address, prefix = ecs.split("/")
        options.append(dns.edns.ECSOption(address, int(prefix)))
    query = dns.message.make_query(name, qtype, use_edns=0 if (edns or options) else False,
                                   payload=payload, options=options or None)
    query.flags &= ~dns.flags.RD
    if qid is not None:
        query.id = qid
    return query


def ask(engine: QueryEngine, name: str, qtype: str = "A", *, client: str = "127.0.0.5",
        tcp: bool = False, **query_args) -> dns.message.Message:
    query = make_query(name, qtype, **query_args)
    reply = engine.handle(query.to_wire(), client, tcp)
    assert reply is not None, "no reply"
    message = dns.message.from_wire(reply)
    assert message.id == query.id
    return message


def render_section(rrsets) -> list[str]:
    lines = []
    for rrset in rrsets:
        for line in rrset.to_text().splitlines():
            lines.append(" ".join(line.split()))
    return lines


def lines_of(text: str) -> list[str]:
    """Zone-file lines from a test table, whitespace folded, comments and blanks dropped."""
    out = []
    for line in text.splitlines():
        line = re.sub(r"\s*;.*$", "", line).strip()
        if line:
            out.append(" ".join(line.split()))
    return out


def rcode_text(message: dns.message.Message) -> str:
    return dns.rcode.to_text(message.rcode())


def addresses_in(message: dns.message.Message) -> set[str]:
    found = set()
    for section in (message.answer, message.authority, message.additional):
        for rrset in section:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                found.update(rdata.address for rdata in rrset)
    return found
