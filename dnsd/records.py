"""Resource records as plain immutable values: what an answer is made of, before any wire encoding; and
the limits a name must keep to be encodable (name_labels)."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Union

# RR types we name in code. Others are carried as OpaqueRdata by number.
A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, OPT, HTTPS, ANY, CAA = 1, 2, 5, 6, 12, 15, 16, 28, 33, 41, 65, 255, 257
CLASS_IN = 1


def normalize_name(name: str) -> str:
    """Absolute name in our canonical form: lower case, no trailing dot; the root is ''."""
    name = name.strip()
    if name.endswith("."):
        name = name[:-1]
    return name.lower()


def name_labels(name: str) -> list[bytes]:
    """Canonical name -> its labels (lower case), validated for the wire: ASCII, 1..63 bytes a
    label, <= 255 bytes in all. Zone-file escapes (\\DDD, \\.) are understood, so the text
    from Query.qname() encodes back to the same wire name."""
    name = name.strip()
    if "\\" in name:
        labels = _unescape_labels(name)
    else:
        name = normalize_name(name)
        if not name:
            return []
        if not name.isascii():
            raise ValueError(f"bad name {name!r}: not ASCII (use the punycode form)")
        labels = [label.encode("ascii") for label in name.split(".")]
    total = 1
    for label in labels:
        if not label:
            raise ValueError(f"bad name {name!r}: empty label")
        if len(label) > 63:
            raise ValueError(f"bad name {name!r}: label longer than 63 bytes")
        total += len(label) + 1
    if total > 255:
        raise ValueError(f"bad name {name!r}: longer than 255 bytes in wire form")
    return labels


def _unescape_labels(name: str) -> list[bytes]:
    """Split a name with zone-file escapes into labels; a final unescaped '.' ends the name."""
    labels = []
    label = bytearray()
    i = 0
    n = len(name)
    ended = False
    while i < n:
        c = name[i]
        ended = False
        if c == "\\":
            digits = name[i + 1:i + 4]
            if len(digits) == 3 and digits.isascii() and digits.isdigit() and int(digits) <= 255:
                label.append(int(digits))
                i += 4
                continue
            if i + 1 >= n or not name[i + 1].isascii():
                raise ValueError(f"bad name {name!r}: bad escape")
            label += name[i + 1].encode("ascii")
            i += 2
            continue
        if c == ".":
            labels.append(bytes(label).lower())
            label = bytearray()
            ended = True
        elif c.isascii():
            label += c.encode("ascii")
        else:
            raise ValueError(f"bad name {name!r}: not ASCII (use the punycode form)")
        i += 1
    if not ended:
        labels.append(bytes(label).lower())
    return labels


@dataclass(frozen=True, slots=True)
class AddressRdata:
    """A or AAAA: one IP address."""

    address: ipaddress.IPv4Address | ipaddress.IPv6Address

    def to_text(self) -> str:
        return str(self.address)


@dataclass(frozen=True, slots=True)
class NameRdata:
    """CNAME, NS, PTR: one domain name (canonical form, see normalize_name)."""

    target: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", normalize_name(self.target))

    def to_text(self) -> str:
        return self.target + "."


@dataclass(frozen=True, slots=True)
class MxRdata:
    preference: int
    exchange: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "exchange", normalize_name(self.exchange))

    def to_text(self) -> str:
        return f"{self.preference} {self.exchange}."


@dataclass(frozen=True, slots=True)
class SoaRdata:
    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int  # negative-caching TTL (RFC 2308)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mname", normalize_name(self.mname))
        object.__setattr__(self, "rname", normalize_name(self.rname))

    def to_text(self) -> str:
        return (f"{self.mname}. {self.rname}. {self.serial} {self.refresh} "
                f"{self.retry} {self.expire} {self.minimum}")


@dataclass(frozen=True, slots=True)
class OpaqueRdata:
    """Any other type (TXT, CAA, SRV, ...): rdata already in wire form, plus its zone-file text.
    Names inside it are never compressed, which RFC 3597 requires for types a peer may not know."""

    wire: bytes
    text: str

    def to_text(self) -> str:
        return self.text


Rdata = Union[AddressRdata, NameRdata, MxRdata, SoaRdata, OpaqueRdata]


@dataclass(frozen=True, slots=True)
class RR:
    name: str  # owner, canonical form (see normalize_name)
    rtype: int
    ttl: int
    rdata: Rdata

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", normalize_name(self.name))

    def to_text(self) -> str:
        return f"{self.name}. {self.ttl} IN {type_name(self.rtype)} {self.rdata.to_text()}"


_TYPE_NAMES = {A: "A", NS: "NS", CNAME: "CNAME", SOA: "SOA", PTR: "PTR", MX: "MX", TXT: "TXT",
               AAAA: "AAAA", SRV: "SRV", OPT: "OPT", HTTPS: "HTTPS", ANY: "ANY", CAA: "CAA",
               64: "SVCB", 44: "SSHFP", 52: "TLSA", 99: "SPF", 13: "HINFO", 35: "NAPTR"}
_TYPE_NUMBERS = {v: k for k, v in _TYPE_NAMES.items()}


def type_name(rtype: int) -> str:
    return _TYPE_NAMES.get(rtype, f"TYPE{rtype}")


def type_number(name: str) -> int:
    """'AAAA' -> 28; also accepts RFC 3597 'TYPE65'. Raises ValueError for an unknown mnemonic."""
    upper = name.upper()
    if upper in _TYPE_NUMBERS:
        return _TYPE_NUMBERS[upper]
    if upper.startswith("TYPE") and upper[4:].isdigit():
        return int(upper[4:])
    raise ValueError(f"unknown record type {name!r}")
