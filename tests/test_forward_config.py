"""The forward section as the config builds it: absent is off; defaults from dnsd.model; upstreams from a
list or a resolv.conf (relative to the config's folder, our own listen addresses left out); what is
refused (open resolvers, loops, unreadable files) is a located problem. The shipped forwarding example
loads, so the README's example cannot rot."""
from __future__ import annotations

import ipaddress

import pytest

from dnsd.cli import main as dnsd_main
from dnsd.config import ConfigError, load_config, parse_config_text
from dnsd.config.upstreams import is_own
from dnsd.model import ForwardCache, ForwardSettings
from tests.dnstest import ROOT

HEAD = """\
zone:
  name: azurecr.test
  soa: {mname: ns1, rname: hostmaster, serial: 1}
  nameservers: [ns1]
  records: [{name: ns1, type: A, value: 127.0.0.1}]
regions: [eastus]
latency_ms: {}
clients: {default_region: eastus}
registries:
  contoso:
    replicas:
      eastus: {addresses: [127.0.0.11]}
server:
  listen: ["127.0.0.1:5353", "0.0.0.0:53"]
"""

net = ipaddress.ip_network

BUILT_CASES = [
    # (forward section, what the model holds)
    ("", None),  # absent: off
    ("forward: {upstreams: [9.9.9.9]}", ForwardSettings(upstreams=(("9.9.9.9", 53),))),
    ("forward:\n  upstreams: ['[2620:00fe::00fe]:53', 127.0.0.1:5300]\n  clients: [172.17.0.0/16, 127.0.0.1/32]\n"
     "  try_timeout: 500ms\n  deadline: 2s\n  max_in_flight: 50\n"
     "  cache: {max_entries: 100, max_bytes: 1048576, min_ttl: 5, max_ttl: 600, max_negative_ttl: 60, "
     "serve_stale: 1h}",
     ForwardSettings(upstreams=(("2620:fe::fe", 53), ("127.0.0.1", 5300)),
                     clients=(net("172.17.0.0/16"), net("127.0.0.1/32")), try_timeout=0.5, deadline=2.0,
                     max_in_flight=50, cache=ForwardCache(100, 1048576, 5, 600, 60, 3600.0))),
    ("forward: {upstreams: 9.9.9.9, clients: 10.0.0.0/8}",
     ForwardSettings(upstreams=(("9.9.9.9", 53),), clients=(net("10.0.0.0/8"),))),
]


@pytest.mark.parametrize("section, expected", BUILT_CASES)
def test_the_section_as_built(section, expected):
    assert parse_config_text(HEAD + section).forward == expected


def test_the_defaults_are_loopback_clients_and_no_stale():
    settings = ForwardSettings()
    assert settings.clients == (net("127.0.0.0/8"), net("::1/128"))
    assert settings.cache.serve_stale == 0


RESOLV_CONF = "search example.internal\nnameserver 127.0.0.1\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n"

RESOLV_CASES = [
    # (resolv.conf text, upstreams or the problem's words). Our 0.0.0.0:53 listener makes loopback us.
    (RESOLV_CONF, (("10.0.0.2", 53), ("10.0.0.3", 53))),
    ("nameserver 127.0.0.53\n", "has no nameserver line other than dnsd's own listen addresses"),
    ("# empty\n", "has no nameserver line other than dnsd's own listen addresses"),
    (None, "cannot read"),
]


@pytest.mark.parametrize("text, expected", RESOLV_CASES)
def test_resolv_conf_relative_to_the_config(tmp_path, text, expected):
    (tmp_path / "etc").mkdir()
    if text is not None:
        (tmp_path / "etc" / "resolv.conf").write_text(text)
    path = tmp_path / "geotm.yaml"
    path.write_text(HEAD + "forward:\n  resolv_conf: etc/resolv.conf\n")
    if isinstance(expected, str):
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert [p.path for p in caught.value.problems] == ["forward.resolv_conf"]
        assert expected in caught.value.render()
    else:
        forward = load_config(path).forward
        assert forward.upstreams == expected
        assert forward.resolv_conf == str(tmp_path / "etc" / "resolv.conf")


OWN_CASES = [
    # (upstream, our listen addresses, is it us)
    (("127.0.0.1", 53), [("127.0.0.1", 53)], True),
    (("127.0.0.1", 53), [("127.0.0.1", 5353)], False),
    (("127.0.0.53", 53), [("0.0.0.0", 53)], True),  # a wildcard covers loopback
    (("::1", 53), [("0.0.0.0", 53)], True),
    (("::1", 53), [("::", 53)], True),
    (("10.0.0.2", 53), [("0.0.0.0", 53)], False),  # maybe ours too, but only loopback is known to be
    (("0:0::1", 5300), [("::1", 5300)], True),  # one spelling per address
]


@pytest.mark.parametrize("upstream, ours, own", OWN_CASES)
def test_is_own(upstream, ours, own):
    assert is_own(*upstream, ours) is own


def test_check_config_mentions_forwarding(capsys):
    assert dnsd_main(["check-config", str(ROOT / "config" / "forward-example.yaml")]) == 0
    assert capsys.readouterr().out.rstrip().endswith(", forwarding to 2 upstreams for 4 client networks")


def test_the_shipped_forwarding_example():
    config = load_config(ROOT / "config" / "forward-example.yaml")
    forward = config.forward
    assert forward is not None and forward.upstreams
    # the host, a container on the default bridge, one on a user-defined network: all may recurse
    for client in ("127.0.0.1", "172.17.0.2", "172.18.0.5"):
        assert any(ipaddress.ip_address(client) in network for network in forward.clients), client
    assert ("172.17.0.1", 53) in config.server.listen  # the address daemon.json's "dns" names
