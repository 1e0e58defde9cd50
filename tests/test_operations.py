"""Operating a real dnsd process: hot reload by SIGHUP under a bounded query load (every answer
checked, a broken config rejected while the old keeps serving), and the operator CLI."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

import dns.message
import dns.rcode
import pytest
import yaml

from tests import harness
from tests.dnstest import ROOT, example_dict

QUERY_NAMES = ["contoso.azurecr.test", "contoso.eastus.geo.azurecr.test", "contoso.westeurope2.geo.azurecr.test"]


def config_a() -> dict:
    data = example_dict()
    data["health"] = {}
    data["probes"] = {}
    data["admin"] = {"listen": "off"}  # tests that need it set their own, with state under tmp_path
    return data


def config_b() -> dict:
    data = config_a()
    data["zone"]["ttl"]["traffic_manager"] = 20
    data["registries"]["contoso"]["replicas"]["westeurope2"] = {"location": "westeurope", "addresses": ["127.0.0.14"]}
    for kind, address in (("data", "10.1.0.20"), ("regional", "10.1.0.21")):
        data["views"]["corp-vnet"]["private_endpoints"]["contoso"][kind]["westeurope2"] = address
    return data


def config_broken() -> dict:
    data = config_b()
    data["registries"]["contoso"]["routing"] = "fastest"
    data["zone"]["records"].append({"name": "x", "type": "MX", "value": "10"})
    return data


def rendered(message: dns.message.Message) -> tuple:
    return (dns.rcode.to_text(message.rcode()), tuple(r.to_text() for r in message.answer))


def expected_answers(data: dict) -> dict[str, tuple]:
    """What each name answers under one config, from an in-process engine of that config."""
    from tests.dnstest import ask, engine_from
    engine = engine_from(data)
    return {name: rendered(ask(engine, name, client="127.0.0.1", edns=False)) for name in QUERY_NAMES}


def load(port: int, count: int, results: list, stop_after: float) -> None:
    """Sequential UDP queries over one socket, bounded in count and time; None for a lost query."""
    deadline = time.monotonic() + stop_after
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        for i in range(count):
            if time.monotonic() > deadline:
                break
            name = QUERY_NAMES[i % len(QUERY_NAMES)]
            query = dns.message.make_query(name, "A", use_edns=False)
            query.flags = 0
            query.id = i % 65536
            sock.sendto(query.to_wire(), ("127.0.0.1", port))
            try:
                data = sock.recv(4096)
                results.append((name, dns.message.from_wire(data)))
            except socket.timeout:
                results.append((name, None))


@pytest.mark.slow
def test_sighup_reload_under_load_answers_every_query_correctly(tmp_path):
    path = tmp_path / "geotm.yaml"
    path.write_text(yaml.safe_dump(config_a(), sort_keys=False))
    valid = {name: {expected_answers(config_a())[name], expected_answers(config_b())[name]} for name in QUERY_NAMES}
    assert len(valid["contoso.westeurope2.geo.azurecr.test"]) == 2   # NXDOMAIN under A, an answer under B
    results: list = []
    with harness.dnsd(path) as process:
        worker = threading.Thread(target=load, args=(process.port, 6000, results, 20.0))
        worker.start()
        sequence = [config_b, config_broken, config_a, config_b, config_broken, config_a, config_b]
        for make in sequence:
            time.sleep(0.25)
            path.write_text(yaml.safe_dump(make(), sort_keys=False))
            process.send_signal(signal.SIGHUP)
        worker.join(30)
        harness.wait_until(lambda: process.log_text().count('"config_reload') >= len(sequence), 10,
                           "every reload logged")
        log = process.log_text()
    assert len(results) >= 1000, f"only {len(results)} queries ran"
    lost = [name for name, reply in results if reply is None]
    assert not lost, f"{len(lost)} queries got no answer during reloads"
    wrong = [(name, rendered(reply)) for name, reply in results if rendered(reply) not in valid[name]]
    assert not wrong, f"{len(wrong)} wrong answers, first: {wrong[0]}"
    seen = {rendered(reply) for name, reply in results if name == "contoso.westeurope2.geo.azurecr.test"}
    assert len(seen) == 2, "the load never saw both configs: reloads did not take effect"
    assert log.count('"config_reloaded"') == 5
    assert log.count('"config_reload_failed"') == 2
    assert "routing: expected one of performance, weighted, priority, got 'fastest'" in log


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dnsd", *args], capture_output=True, text=True, timeout=30,
                          cwd=ROOT)


def address_of(port: int, name: str, ecs: str | None = None) -> str:
    from tests.dnstest import make_query
    import dns.query
    reply = dns.query.udp(make_query(name, "A", ecs=ecs), "127.0.0.1", port=port, timeout=2)
    return reply.answer[-1][0].address


@pytest.mark.slow
def test_operator_cli_against_a_running_dnsd(tmp_path):
    admin_port = harness.free_port()
    token = tmp_path / "token"
    token.write_text("cli-test-token\n")
    data = config_a()
    data["admin"] = {"listen": f"127.0.0.1:{admin_port}", "token_file": str(token),
                     "state_file": str(tmp_path / "overrides.json")}
    path = tmp_path / "geotm.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    cfg = ("--config", str(path))
    with harness.dnsd(path, admin_port=admin_port) as process:
        westeurope_client = "198.51.100.0/24"
        assert address_of(process.port, "contoso.azurecr.test", westeurope_client) == "127.0.0.12"

        drained = run("drain", "contoso", "westeurope", "--for", "5m", "--reason", "storage migration",
                      "--actor", "bob", *cfg)
        assert drained.returncode == 0, drained.stderr
        assert drained.stdout.startswith("drain contoso/westeurope until ")
        assert address_of(process.port, "contoso.azurecr.test", westeurope_client) == "127.0.0.11"
        assert address_of(process.port, "contoso.westeurope.geo.azurecr.test") == "127.0.0.12"

        status = run("status", *cfg)
        assert status.returncode == 0
        assert "[drain by bob@127.0.0.1: storage migration]" in status.stdout

        assert run("drain", "contoso", "eastus", *cfg).returncode == 0
        last = run("drain", "contoso", "southeastasia", *cfg)
        assert last.returncode == 1 and "last serving replica" in last.stderr

        undone = run("undrain", "contoso", "westeurope", *cfg)
        assert undone.returncode == 0 and "removed drain of contoso/westeurope" in undone.stdout
        assert address_of(process.port, "contoso.azurecr.test", westeurope_client) == "127.0.0.12"

        path.write_text(yaml.safe_dump(config_broken() | {"admin": data["admin"]}, sort_keys=False))
        bad = run("reload", *cfg)
        assert bad.returncode == 1 and "HTTP 422" in bad.stderr
        assert sum(1 for line in bad.stderr.splitlines() if line.startswith(f"  {path}:")) == 2

        audit = run("audit", *cfg)
        assert audit.returncode == 0 and "bob@127.0.0.1: set drain contoso/westeurope storage migration" in audit.stdout

        live = run("explain", "contoso.azurecr.test", "--live", "--ecs", westeurope_client, *cfg)
        assert "drained: eastus" in live.stdout

        wrong_token = tmp_path / "wrong-token"
        wrong_token.write_text("nope\n")
        wrong = tmp_path / "wrong.yaml"
        wrong.write_text(yaml.safe_dump(data | {"admin": {**data["admin"], "token_file": str(wrong_token)}},
                                        sort_keys=False))
        refused = run("drain", "contoso", "westeurope", "--config", str(wrong))
        assert refused.returncode == 1 and "HTTP 401" in refused.stderr
        assert process.running()

    unreachable = run("status", *cfg)
    assert unreachable.returncode == 1 and "cannot reach dnsd's admin API" in unreachable.stderr
