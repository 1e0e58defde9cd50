"""Upstreams: their addresses from HOST:PORT lists and resolv.conf files, never our own listeners
(dnsd.config.upstreams), and the order they are tried in (dnsd.forward.upstreams): smoothed RTT,
penalties, and the decay that has slower upstreams measured again now and then."""
from __future__ import annotations

import pytest

from dnsd.config.upstreams import nameservers_from_resolv_conf, parse_upstreams, read_resolv_conf
from dnsd.forward.upstreams import SRTT_MAX, Upstream, Upstreams

PARSE_CASES = [
    # (texts, parsed or the error's words)
    (["9.9.9.9"], [("9.9.9.9", 53)]),
    (["127.0.0.1:5353", "[::1]:53", "2620:fe::fe"], [("127.0.0.1", 5353), ("::1", 53), ("2620:fe::fe", 53)]),
    (["[2620:00fe:0::00fe]"], [("2620:fe::fe", 53)]),  # one spelling per address
    (["dns.google"], "not an IP address"),
    (["1.1.1.1:0"], "port 0"),
    (["1.1.1.1:99999"], "port must be"),
]


@pytest.mark.parametrize("texts, expected", PARSE_CASES)
def test_parse_upstreams(texts, expected):
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            parse_upstreams(texts)
    else:
        assert parse_upstreams(texts) == expected


RESOLV_CONF = """\
# written by NetworkManager
search example.internal
nameserver 10.0.0.2
nameserver  10.0.0.3   # the backup
nameserver fe80::1%eth0
; a comment
nameserver not-an-address
nameserver
nameserver 10.0.0.2
options edns0 timeout:2
nameserver 127.0.0.53
nameserver ::1
"""

RESOLV_CASES = [
    # (our listen addresses, nameservers kept)
    ((), ["10.0.0.2", "10.0.0.3", "fe80::1%eth0", "127.0.0.53", "::1"]),
    ((("127.0.0.53", 53),), ["10.0.0.2", "10.0.0.3", "fe80::1%eth0", "::1"]),
    ((("127.0.0.53", 5353),), ["10.0.0.2", "10.0.0.3", "fe80::1%eth0", "127.0.0.53", "::1"]),  # other port
    ((("10.0.0.3", 53), ("0:0::1", 53)), ["10.0.0.2", "fe80::1%eth0", "127.0.0.53"]),
    ((("0.0.0.0", 53),), ["10.0.0.2", "10.0.0.3", "fe80::1%eth0"]),  # a wildcard: loopback is us
    ((("::", 53),), ["10.0.0.2", "10.0.0.3", "fe80::1%eth0"]),
]


@pytest.mark.parametrize("ours, kept", RESOLV_CASES)
def test_resolv_conf(ours, kept):
    assert nameservers_from_resolv_conf(RESOLV_CONF, ours) == [(host, 53) for host in kept]


def test_read_resolv_conf(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 192.0.2.53\n")
    assert read_resolv_conf(str(path)) == [("192.0.2.53", 53)]
    with pytest.raises(OSError):
        read_resolv_conf(str(tmp_path / "missing"))


SENDER_CASES = [
    # (upstream, datagram sender, accepted)
    (("127.0.0.1", 53), ("127.0.0.1", 53), True),
    (("127.0.0.1", 53), ("127.0.0.1", 54), False),
    (("127.0.0.1", 53), ("127.0.0.2", 53), False),
    (("::1", 53), ("::1", 53, 0, 0), True),
    (("::1", 53), ("0:0::1", 53, 0, 0), True),
    (("127.0.0.1", 53), None, True),  # a connected socket: the kernel checked
]


@pytest.mark.parametrize("upstream, sender, accepted", SENDER_CASES)
def test_replies_must_come_from_the_upstream(upstream, sender, accepted):
    assert Upstream(*upstream).sent_from(sender) == accepted


def test_unmeasured_upstreams_go_first_then_the_fastest():
    ups = Upstreams([("10.0.0.1", 53), ("10.0.0.2", 53), ("10.0.0.3", 53)])
    first, second, third = ups.all
    assert ups.ranked() == [first, second, third]  # config order among equals
    ups.measured(first, 0.050)
    assert ups.ranked() == [second, third, first]  # never measured -> asked early
    ups.measured(second, 0.010)
    ups.measured(third, 0.020)
    assert ups.ranked() == [second, third, first]


def test_srtt_is_smoothed():
    up = Upstream("10.0.0.1", 53)
    Upstreams.measured(up, 0.100)
    assert up.srtt == pytest.approx(0.100)  # the first measurement is taken as it is
    Upstreams.measured(up, 0.200)
    assert up.srtt == pytest.approx(0.7 * 0.100 + 0.3 * 0.200)


PENALTY_CASES = [
    # (srtt before, timeout, srtt after)
    (0.0, 1.0, 2.0),
    (0.010, 0.5, 1.0),
    (2.0, 1.0, 4.0),  # a repeat doubles
    (8.0, 1.0, SRTT_MAX),
]


@pytest.mark.parametrize("before, timeout, after", PENALTY_CASES)
def test_penalty(before, timeout, after):
    up = Upstream("10.0.0.1", 53, srtt=before)
    Upstreams.penalised(up, timeout)
    assert up.srtt == pytest.approx(after)


def test_a_slower_upstream_is_asked_again_after_a_while():
    ups = Upstreams([("10.0.0.1", 53), ("10.0.0.2", 53)])
    fast, slow = ups.all
    fast.srtt, slow.srtt = 0.010, 0.020
    firsts = []
    for _ in range(40):
        order = ups.for_query()
        firsts.append(order[0])
        ups.measured(order[0], 0.010 if order[0] is fast else 0.020)
    assert firsts[:30] == [fast] * 30
    assert slow in firsts  # 0.98^35 < 0.5: the slow one came first, and was measured again
    assert slow.srtt > fast.srtt  # ... which put it back behind the fast one


def test_explain_order_has_no_side_effects():
    ups = Upstreams([("10.0.0.1", 53), ("10.0.0.2", 53)])
    ups.all[0].srtt, ups.all[1].srtt = 0.010, 0.020
    ups.ranked()
    assert [up.srtt for up in ups.all] == [0.010, 0.020]
