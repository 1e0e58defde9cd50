"""Config loading: the shipped configs load; each bad fixture (named after its defect) reports exactly the
problems written at its top, with file:line:col and key path; a bogus key anywhere is rejected."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from dnsd.cli import main as dnsd_main
from dnsd.config import ConfigError, keys, load_config, parse_config_text, read_document
from dnsd.model import EtcdSettings, Soa
from tests.dnstest import ROOT, example_dict

BAD = sorted((ROOT / "tests" / "config" / "bad").glob("*.yaml"))
SHIPPED = sorted((ROOT / "config").glob("*.yaml"))
# every shipped config serves the registry zone, but the compose stack's upstream: the outside world
# dnsd forwards to in docker-compose.yml, so its zone must be another one
ZONE_OF = {"compose-upstream.yaml": "example.test"}


def expected_problems(path: Path) -> list[str]:
    return [f"{path}:{line[len('# expect: '):]}" for line in path.read_text().splitlines()
            if line.startswith("# expect: ")]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_load(path, capsys):
    load_config(path)
    assert dnsd_main(["check-config", str(path)]) == 0
    assert f": OK: zone {ZONE_OF.get(path.name, 'azurecr.test')}," in capsys.readouterr().out


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_config_reports_every_problem(path):
    expected = expected_problems(path)
    assert expected, f"{path.name} has no '# expect:' lines"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [str(problem) for problem in caught.value.problems] == expected


@pytest.mark.parametrize("path", BAD[:3], ids=lambda p: p.stem)
def test_check_config_prints_problems_and_fails(path, capsys):
    assert dnsd_main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    for line in expected_problems(path):
        assert f"  {line}" in err.splitlines()


def test_check_config_on_a_missing_file(capsys):
    assert dnsd_main(["check-config", "/nonexistent/geotm.yaml"]) == 2
    assert "cannot read" in capsys.readouterr().err


def _mapping_paths(node, path=()):
    if isinstance(node, dict):
        yield path
        for key, value in node.items():
            yield from _mapping_paths(value, path + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _mapping_paths(value, path + (index,))


INJECTION_SITES = list(_mapping_paths(example_dict()))


@pytest.mark.parametrize("site", INJECTION_SITES, ids=lambda s: ".".join(map(str, s)) or "top")
def test_a_bogus_key_in_any_mapping_is_rejected(site):
    """hickory-dns style: inject a key into every mapping of the example; each must be refused there."""
    data = copy.deepcopy(example_dict())
    node = data
    for key in site:
        node = node[key]
    node["bogus_key"] = "bogus"
    with pytest.raises(ConfigError) as caught:
        parse_config_text(yaml.safe_dump(data, sort_keys=False), "injected.yaml")
    paths = [problem.path for problem in caught.value.problems]
    assert any(path.endswith("bogus_key") for path in paths), caught.value.render()


CHECK_KEYS = ("kind, address, port, scheme, host_header, path, method, headers, expect_status, body_contains, "
              "json_path, json_equals, tls_verify, ca_file, canary_manifest, canary_blob, write_canary, components")
REPLICA = ("registries", "contoso", "replicas", "eastus")
ALLOWED_KEYS = [
    # (mapping, what is put there first (None: the example's own), the keys its unknown-key problem lists)
    ((), None, "server, zone, regions, latency_ms, clients, registries, views, probes, health, admin, forward, "
              "cluster"),
    (("server",), None, "listen, edns_udp_size, tcp_idle_timeout, tcp_idle_timeout_under_load, tcp_max_connections, "
                        "tcp_max_connections_per_source, tcp_source_prefix_v4, tcp_source_prefix_v6, fd_reserve, "
                        "rate_limit"),
    (("server", "rate_limit"), {}, "responses_per_second, nxdomains_per_second, errors_per_second, slip, "
                                   "ipv4_prefix_length, ipv6_prefix_length, exempt, table_size"),
    (("zone",), None, "name, soa, nameservers, ttl, records, ns_ttl"),
    (("zone", "soa"), None, "mname, rname, serial, refresh, retry, expire, negative_ttl, ttl"),
    (("zone", "ttl"), None, "global, privatelink, traffic_manager, traffic_manager_short, regional, data, replica, "
                            "private"),
    (("zone", "records", 0), None, "name, type, ttl, value, values"),
    (("clients",), None, "networks, default_region, geoip"),
    (("clients", "geoip"), {"database": "x.mmdb", "countries": {"JP": "eastus"}}, "database, countries, continents"),
    (("registries", "contoso"), None, "routing, all_down, regional_endpoints, data_endpoints, replicas"),
    (("registries", "contoso", "all_down"), {"policy": "fail_open"}, "policy, replica"),
    (REPLICA, None, "location, host, addresses, weight, priority, global_routing, probe"),
    (REPLICA + ("probe",), None, "checks, interval, jitter, timeout, fall, rise"),
    (REPLICA + ("probe", "checks", 0), None, CHECK_KEYS),
    (REPLICA + ("probe",), {"kind": "tcp", "port": 5000}, CHECK_KEYS + ", interval, jitter, timeout, fall, rise"),
    (("views", "corp-vnet"), None, "sources, private_endpoints, trusted_resolvers"),
    (("views", "corp-vnet", "private_endpoints", "contoso"), None, "global, data, regional"),
    (("probes",), None, "listen, max_concurrent, webhook, state_file, tls, token_file, public_metrics, "
                        "registry_credentials"),
    (("probes", "webhook"), {"url": "http://127.0.0.1:9000/"}, "url, timeout, retries, backoff, secret_file"),
    (("probes", "tls"), {"cert_file": "c.pem", "key_file": "k.pem"}, "cert_file, key_file"),
    (("health",), None, "feeds, quorum, poll_interval, ttl, state_file, ca_file, token_file"),
    (("health", "feeds", 0), {"url": "http://127.0.0.1:8053/v1/health"}, "url, ca_file, token_file"),
    (("admin",), None, "listen, token_file, token_env, public_metrics, public_status_page, state_file"),
    (("forward",), {"upstreams": ["9.9.9.9"]}, "upstreams, resolv_conf, clients, try_timeout, deadline, "
                                                "max_in_flight, cache"),
    (("cluster",), {"etcd": {"endpoints": ["http://127.0.0.1:2379"], "tls": {}}}, "etcd, member_ttl"),
]
CLUSTER_KEYS = [  # (where in the cluster section, the keys its unknown-key problem lists)
    (("etcd",), "endpoints, prefix, tls, username, password_file, timeout"),
    (("etcd", "tls"), "ca_file, cert_file, key_file"),
]


@pytest.mark.parametrize("site, given, allowed", ALLOWED_KEYS,
                         ids=[".".join(map(str, site)) + ("(given)" if given is not None else "") or "top"
                              for site, given, _ in ALLOWED_KEYS])
def test_an_unknown_key_names_every_key_its_mapping_allows(site, given, allowed):
    """The allowed keys come from the model's fields (dnsd.config.keys): each mapping lists them all."""
    data = copy.deepcopy(example_dict())
    node = data
    for key in site[:-1]:
        node = node[key]
    if site and given is not None:
        node[site[-1]] = copy.deepcopy(given)
    node = node[site[-1]] if site else node
    node["bogus_key"] = "bogus"
    with pytest.raises(ConfigError) as caught:
        parse_config_text(yaml.safe_dump(data, sort_keys=False), "keys.yaml")
    path = ".".join(f"[{k}]" if isinstance(k, int) else k for k in site + ("bogus_key",)).replace(".[", "[")
    assert f"{path}: unknown key 'bogus_key' (allowed: {allowed})" in caught.value.render()


@pytest.mark.parametrize("site, allowed", CLUSTER_KEYS, ids=lambda v: ".".join(v) if isinstance(v, tuple) else "")
def test_an_unknown_cluster_key_names_every_key_its_mapping_allows(site, allowed):
    data = copy.deepcopy(example_dict())
    data["cluster"] = {"etcd": {"endpoints": ["http://127.0.0.1:2379"], "tls": {}}}
    node = data["cluster"]
    for key in site:
        node = node[key]
    node["bogus_key"] = "bogus"
    with pytest.raises(ConfigError) as caught:
        parse_config_text(yaml.safe_dump(data, sort_keys=False), "keys.yaml")
    path = ".".join(("cluster",) + site + ("bogus_key",))
    assert f"{path}: unknown key 'bogus_key' (allowed: {allowed})" in caught.value.render()


def test_the_cluster_section_absent_is_none_and_present_takes_the_model_defaults():
    data = copy.deepcopy(example_dict())
    assert parse_config_text(yaml.safe_dump(data), "plain.yaml").cluster is None
    data["cluster"] = {"etcd": {"endpoints": ["http://127.0.0.1:2379/", "https://10.0.0.2:2379"]}}
    etcd = parse_config_text(yaml.safe_dump(data), "cluster.yaml").cluster.etcd
    assert etcd == EtcdSettings(endpoints=("http://127.0.0.1:2379", "https://10.0.0.2:2379"))


def test_a_key_list_naming_a_field_the_model_does_not_have_fails_at_import():
    with pytest.raises(TypeError, match="Soa has no field serial_number"):
        keys.keys_of(Soa, renamed={"serial_number": "serial"})


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_read_document_gives_what_yaml_gives(path):
    assert read_document(path) == yaml.safe_load(path.read_text())


@pytest.mark.parametrize("text,expected", [
    ("a: {b: [1, 2.5, true, null, '3']}\n", {"a": {"b": [1, 2.5, True, None, "3"]}}),
    ("x: &a [1]\ny: *a\n", {"x": [1], "y": [1]}),
    ("- a\n", ["a"]),
    ("", None),
    ("a: 1\na: 2\n", "duplicate key 'a' (first defined at line 1)"),
    ("a: &x {b: 1}\nc:\n  <<: *x\n", "keys must be plain strings"),
], ids=["scalars", "alias", "list", "empty", "duplicate-key", "merge-key"])
def test_read_document(tmp_path, text, expected):
    path = tmp_path / "doc.yaml"
    path.write_text(text)
    if isinstance(expected, str):
        with pytest.raises(ConfigError) as caught:
            read_document(path)
        assert f"{path}:" in caught.value.render() and expected in caught.value.render()
    else:
        assert read_document(path) == expected


def test_problem_lines_are_file_line_column_path_message():
    text = "zone:\n  name: azurecr.test\n  bogus: 1\n"
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, "x.yaml")
    assert "x.yaml:3:3: zone.bogus: unknown key 'bogus'" in caught.value.render()


@pytest.mark.parametrize("text,message", [
    ("", "the config is empty"),
    ("- a\n- b\n", "expected the config (a mapping), got a list"),
    ("zone: {name: a}\nzone: {name: b}\n", "duplicate key 'zone' (first defined at line 1)"),
    ("a: &x {b: 1}\nc:\n  <<: *x\n", "keys must be plain strings"),
])
def test_document_level_problems(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, "doc.yaml")
    assert message in caught.value.render()
