"""Answers in wire form, made once at compile time: ``encode_answer`` turns a logical ``Answer`` into a
``PackedAnswer`` (answer, authority and additional sections, names compressed). The body assumes the reply
is laid out as header (12 bytes) + the query's question + body, so it may point into the qname."""
from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

from dnsd.answers.answer import Answer
from dnsd.records import (
    AAAA,
    CNAME,
    MX,
    NS,
    PTR,
    SOA,
    A,
    AddressRdata,
    MxRdata,
    NameRdata,
    OpaqueRdata,
    SoaRdata,
    name_labels,
    type_name,
)

__all__ = ["PackedAnswer", "encode_answer", "with_ttls"]

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class PackedAnswer:
    rcode: int  # 0..4095 (extended rcodes like BADVERS=16 need EDNS)
    authoritative: bool
    body: bytes  # answer + authority + additional RRs, wire format
    ancount: int
    nscount: int
    arcount: int
    client_dependent: bool  # copied from Answer.client_dependent


@functools.lru_cache(maxsize=16384)
def _name_wire(name: str) -> tuple[bytes, tuple[int, ...]]:
    """A name's uncompressed wire form (lower case) and the offset of each label in it. Every
    suffix wire[offset:] is then the unambiguous key for the compression table."""
    out = bytearray()
    offsets = []
    for label in name_labels(name):
        offsets.append(len(out))
        out.append(len(label))
        out += label
    out.append(0)
    return bytes(out), tuple(offsets)


def _put_name(buf: bytearray, name: str, table: dict[bytes, int] | None, base: int) -> None:
    """Append name at buf; with a table (suffix wire -> message offset), compress against it
    and record the new suffixes. base is the message offset of buf[0]."""
    wire, offsets = _name_wire(name)
    if table is not None:
        here = base + len(buf)
        for offset in offsets:
            suffix = wire[offset:]
            ptr = table.get(suffix)
            if ptr is not None:
                buf += wire[:offset]
                buf += _U16.pack(0xC000 | ptr)
                return
            if here + offset < 0x4000:
                table[suffix] = here + offset
    buf += wire


def _put_rr(buf: bytearray, rr, table: dict[bytes, int], base: int) -> int:
    """Append one RR; returns the offset of its TTL field in buf."""
    if not 0 <= rr.rtype <= 0xFFFF:
        raise ValueError(f"bad record type {rr.rtype}")
    if not 0 <= rr.ttl <= 0x7FFFFFFF:
        raise ValueError(f"bad TTL {rr.ttl} for {rr.name!r}")
    _put_name(buf, rr.name, table, base)
    ttl_offset = len(buf) + 4
    buf += _U16.pack(rr.rtype) + b"\x00\x01" + _U32.pack(rr.ttl) + b"\x00\x00"
    start = len(buf)
    rdata = rr.rdata
    rtype = rr.rtype
    if isinstance(rdata, AddressRdata):
        packed = rdata.address.packed
        if (rtype == A and len(packed) != 4) or (rtype == AAAA and len(packed) != 16):
            raise ValueError(f"{type_name(rtype)} record {rr.name!r} holds {rdata.address}")
        buf += packed
    elif isinstance(rdata, NameRdata):
        _put_name(buf, rdata.target, table if rtype in (CNAME, NS, PTR) else None, base)
    elif isinstance(rdata, MxRdata):
        if not 0 <= rdata.preference <= 0xFFFF:
            raise ValueError(f"bad MX preference {rdata.preference}")
        buf += _U16.pack(rdata.preference)
        _put_name(buf, rdata.exchange, table if rtype == MX else None, base)
    elif isinstance(rdata, SoaRdata):
        compress = table if rtype == SOA else None
        _put_name(buf, rdata.mname, compress, base)
        _put_name(buf, rdata.rname, compress, base)
        try:
            buf += struct.pack("!IIIII", rdata.serial, rdata.refresh, rdata.retry, rdata.expire,
                               rdata.minimum)
        except struct.error:
            raise ValueError(f"bad SOA numbers in {rdata.to_text()!r}") from None
    elif isinstance(rdata, OpaqueRdata):
        buf += rdata.wire
    else:
        raise ValueError(f"unknown rdata {rdata!r}")
    rdlen = len(buf) - start
    if rdlen > 0xFFFF:
        raise ValueError(f"rdata of {rr.name!r} longer than 65535 bytes")
    buf[start - 2:start] = _U16.pack(rdlen)
    return ttl_offset


def encode_answer(answer: Answer, qname_wire_len: int, qname: str,
                  ttl_offsets: list[int] | None = None, client_dependent: bool | None = None) -> PackedAnswer:
    """Encode an Answer's sections for a reply laid out as header + question + body.

    qname is the question name (canonical text), qname_wire_len its wire length (root = 1).
    Owner names and names inside CNAME/NS/PTR/MX/SOA rdata are compressed, also against the
    question's qname at offset 12. Raises ValueError for names or values that can't be encoded.
    ttl_offsets, when given, receives the body offset of every RR's TTL field, in section order
    (so a variant with other TTLs can be made by patching bytes, see with_ttls)."""
    if not 0 <= answer.rcode <= 0xFFF:
        raise ValueError(f"bad rcode {answer.rcode}")
    qwire, offsets = _name_wire(qname)
    if len(qwire) != qname_wire_len:
        raise ValueError(f"qname {qname!r} is {len(qwire)} bytes in wire form, "
                         f"not {qname_wire_len}")
    table = {qwire[offset:]: 12 + offset for offset in offsets}
    base = 12 + qname_wire_len + 4
    buf = bytearray()
    for section in (answer.answer, answer.authority, answer.additional):
        for rr in section:
            offset = _put_rr(buf, rr, table, base)
            if ttl_offsets is not None:
                ttl_offsets.append(offset)
    if base + len(buf) > 0xFFFF:
        raise ValueError(f"answer for {qname!r} is larger than 65535 bytes")
    dependent = answer.client_dependent if client_dependent is None else client_dependent
    return PackedAnswer(answer.rcode, answer.authoritative, bytes(buf), len(answer.answer),
                        len(answer.authority), len(answer.additional), dependent)


def with_ttls(packed: PackedAnswer, patches: list[tuple[int, int]]) -> PackedAnswer:
    """The same answer with the TTLs at the given body offsets replaced: (offset, ttl) pairs."""
    body = bytearray(packed.body)
    for offset, ttl in patches:
        _U32.pack_into(body, offset, ttl)
    return PackedAnswer(packed.rcode, packed.authoritative, bytes(body), packed.ancount, packed.nscount,
                        packed.arcount, packed.client_dependent)
