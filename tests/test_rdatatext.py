"""dnsd.config.rdatatext against dnspython: zone-file rdata text must read to the structured rdata we
mean, or to the same wire bytes dnspython makes of it; bad text fails with one line naming what was
expected."""
from __future__ import annotations

import ipaddress

import dns.name
import dns.rdata
import pytest

from dnsd.records import (
    AAAA,
    CAA,
    CNAME,
    HTTPS,
    MX,
    NS,
    PTR,
    SOA,
    SRV,
    TXT,
    A,
    AddressRdata,
    MxRdata,
    NameRdata,
    OpaqueRdata,
    SoaRdata,
)
from dnsd.config.rdatatext import rdata_from_text

ORIGIN = "azurecr.test"

# (type, text, expected structured rdata or None = compare wire with dnspython's reading)
RDATA_CASES = [
    pytest.param(A, "192.0.2.1", AddressRdata(ipaddress.IPv4Address("192.0.2.1")), id="a"),
    pytest.param(AAAA, "2001:DB8::1", AddressRdata(ipaddress.IPv6Address("2001:db8::1")), id="aaaa"),
    pytest.param(CNAME, "weu.data", NameRdata("weu.data.azurecr.test"), id="cname-relative"),
    pytest.param(CNAME, "Other.Example.", NameRdata("other.example"), id="cname-absolute"),
    pytest.param(CNAME, "@", NameRdata("azurecr.test"), id="cname-at"),
    pytest.param(NS, "ns1", NameRdata("ns1.azurecr.test"), id="ns"),
    pytest.param(PTR, "host.example.", NameRdata("host.example"), id="ptr"),
    pytest.param(MX, "10 mail", MxRdata(10, "mail.azurecr.test"), id="mx"),
    pytest.param(MX, "0 .", MxRdata(0, ""), id="mx-null"),
    pytest.param(SOA, "ns1 hostmaster 2024010101 3600 600 86400 60",
                 SoaRdata("ns1.azurecr.test", "hostmaster.azurecr.test", 2024010101, 3600, 600, 86400,
                          60), id="soa"),
    pytest.param(SOA, "ns1.x. h.x. ( 1 ; serial\n 1h 10m 1w 30s )",
                 SoaRdata("ns1.x", "h.x", 1, 3600, 600, 604800, 30), id="soa-multiline-units"),
    pytest.param(TXT, '"v=spf1 -all"', None, id="txt"),
    pytest.param(TXT, '"a" "b c" d', None, id="txt-several-strings"),
    pytest.param(TXT, r'"semi\059colon \"quoted\" back\\slash"', None, id="txt-escapes"),
    pytest.param(TXT, '""', None, id="txt-empty-string"),
    pytest.param(99, '"v=spf1 include:x.test -all"', None, id="spf"),
    pytest.param(SRV, "10 5 443 weu.data", None, id="srv-relative"),
    pytest.param(SRV, "0 0 0 .", None, id="srv-root"),
    pytest.param(CAA, '0 issue "letsencrypt.org"', None, id="caa-issue"),
    pytest.param(CAA, '128 iodef "mailto:sec@azurecr.test"', None, id="caa-iodef"),
    pytest.param(CAA, '0 issuewild ";"', None, id="caa-issuewild-none"),
    pytest.param(HTTPS, '1 . alpn="h2,h3" port=443 ipv4hint=192.0.2.1,192.0.2.2', None,
                 id="https-params"),
    pytest.param(HTTPS, "0 svc.example.", None, id="https-alias"),
    pytest.param(HTTPS, "1 svc ipv6hint=2001:db8::1", None, id="https-relative-target"),
    pytest.param(64, "1 . alpn=h2 no-default-alpn", None, id="svcb"),
    pytest.param(44, "1 2 " + "0123456789ABCDEF" * 4,
                 None, id="sshfp"),
    pytest.param(52, "3 1 1 0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF", None,
                 id="tlsa"),
    pytest.param(35, '100 10 "S" "SIP+D2U" "" _sip._udp', None, id="naptr"),
    pytest.param(43, "60485 5 1 2BB183AF5F22588179A53B0A98631FAD1A292118", None, id="ds"),
    pytest.param(13, '"x86" "linux"', None, id="hinfo"),
    pytest.param(17, "hostmaster @", None, id="rp-two-names-uncompressed"),
    pytest.param(39, "target", None, id="dname"),
    pytest.param(65, "1 svc ech=AAT+DQAA", None, id="https-ech"),
    pytest.param(48, "257 3 13 mdsswUyr3DPW132mOi8V9xESWE8jTo0d "
                 "xCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ==", None, id="dnskey"),
    pytest.param(65400, r"\# 4 0A0B0C0D", None, id="generic-unknown-type"),
    pytest.param(65400, r"\# 0", None, id="generic-empty"),
    pytest.param(CAA, r"\# 5 0001780000", None, id="generic-known-type"),
]


@pytest.mark.parametrize("rtype, text, expected", RDATA_CASES)
def test_rdata_from_text(rtype, text, expected):
    rd = rdata_from_text(rtype, text, ORIGIN)
    if expected is not None:
        assert rd == expected
        return
    assert isinstance(rd, OpaqueRdata)
    origin = dns.name.from_text(ORIGIN)
    theirs = dns.rdata.from_text("IN", rtype, text, origin=origin, relativize=False)
    assert rd.wire == theirs.to_wire()
    # the text we keep reads back to the same rdata
    again = dns.rdata.from_text("IN", rtype, rd.text, origin=origin, relativize=False)
    assert again == theirs


def test_txt_long_strings_split():
    value = "x" * 600
    rd = rdata_from_text(TXT, f'"{value}" "short"', ORIGIN)
    assert rd.wire == b"\xff" + b"x" * 255 + b"\xff" + b"x" * 255 + b"\x5a" + b"x" * 90 + b"\x05short"
    theirs = dns.rdata.from_text("IN", "TXT", rd.text)
    assert b"".join(theirs.strings) == value.encode() + b"short"


BAD_RDATA_CASES = [
    pytest.param(MX, "10", "expected 'PREFERENCE EXCHANGE'", id="mx-missing-exchange"),
    pytest.param(MX, "x mail", "PREFERENCE EXCHANGE", id="mx-bad-preference"),
    pytest.param(MX, "70000 mail", "PREFERENCE EXCHANGE", id="mx-preference-too-big"),
    pytest.param(A, "::1", "IPv4", id="a-with-ipv6"),
    pytest.param(A, "1.2.3", "IPv4", id="a-short"),
    pytest.param(A, "1.2.3.4 5.6.7.8", "IPv4", id="a-two"),
    pytest.param(A, "", "IPv4", id="a-empty"),
    pytest.param(AAAA, "192.0.2.1", "IPv6", id="aaaa-with-ipv4"),
    pytest.param(AAAA, "fe80::1%eth0", "IPv6", id="aaaa-scope"),
    pytest.param(CNAME, "a b", "TARGET", id="cname-two-names"),
    pytest.param(CNAME, "a..b.", "empty label", id="cname-empty-label"),
    pytest.param(CNAME, "x" * 64 + ".test.", "63", id="cname-label-64"),
    pytest.param(SOA, "ns1 hostmaster 1 2 3", "MNAME RNAME SERIAL", id="soa-short"),
    pytest.param(SOA, "ns1 h 1 2 3 4 x", "MNAME RNAME SERIAL", id="soa-not-number"),
    pytest.param(SOA, "ns1 h 99999999999 2 3 4 5", "4294967295", id="soa-serial-too-big"),
    pytest.param(TXT, '"unterminated', "unterminated", id="txt-unterminated"),
    pytest.param(TXT, "", "STRINGS", id="txt-empty"),
    pytest.param(SRV, "10 5 web", "PRIORITY WEIGHT PORT TARGET", id="srv-short"),
    pytest.param(SRV, "10 5 x web", "PRIORITY WEIGHT PORT TARGET", id="srv-port-not-number"),
    pytest.param(SRV, "10 5 70000 web", "PRIORITY WEIGHT PORT TARGET", id="srv-port-too-big"),
    pytest.param(CAA, "0 issue", "FLAGS TAG", id="caa-missing-value"),
    pytest.param(CAA, '0 is-sue "x"', "FLAGS TAG", id="caa-bad-tag"),
    pytest.param(HTTPS, "1", "PRIORITY TARGET", id="https-short"),
    pytest.param(HTTPS, "1 . bogus=1", "PRIORITY TARGET", id="https-bad-key"),
    pytest.param(44, "1 2 XYZ", "HEX", id="sshfp-bad-hex"),
    pytest.param(48, "257 3 13 !!!", "base64", id="dnskey-bad-base64"),
    pytest.param(65, "1 . port=99999", "PRIORITY TARGET", id="https-port-too-big"),
    pytest.param(TXT, "x\\", "backslash", id="txt-dangling-backslash"),
    pytest.param(65400, "0A0B", r"\\# LENGTH HEX", id="unknown-type-not-generic"),
    pytest.param(65400, r"\# 3 0A0B", "LENGTH", id="generic-length-mismatch"),
    pytest.param(65400, r"\# 2 0A0", "hex", id="generic-odd-hex"),
    pytest.param(41, "", "cannot have record data", id="opt-type"),
    pytest.param(255, "", "cannot have record data", id="any-type"),
]


@pytest.mark.parametrize("rtype, text, message", BAD_RDATA_CASES)
def test_bad_rdata_text(rtype, text, message):
    with pytest.raises(ValueError, match=message) as info:
        rdata_from_text(rtype, text, ORIGIN)
    msg = str(info.value)
    assert "\n" not in msg
    if rtype not in (41, 255):
        assert msg.startswith("bad ") and repr(text) in msg


def test_bad_rdata_message_format():
    with pytest.raises(ValueError) as info:
        rdata_from_text(MX, "10", ORIGIN)
    assert str(info.value) == "bad MX rdata '10': expected 'PREFERENCE EXCHANGE'"
