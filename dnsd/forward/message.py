"""Forwarded messages on the wire: the query we send upstream, the walker that checks an upstream reply
and rebuilds it into a storable message (in-zone owners and the additional section removed, no OPT),
and the reply built from a stored message for each client. Hand-written, bounds-checked, no dnslib."""
from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from dnsd.answers.answer import NOERROR, NXDOMAIN
from dnsd.protocol.wire import Query

_HDR = struct.Struct("!HHHHHH")
_RRFIX = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_QTAIL = struct.Struct("!HH")  # qtype, qclass
_OPT_FIX = struct.Struct("!HHBBHH")  # type, udp size, ext-rcode, version, flags, rdlength
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")

QR, AA, TC, RD, RA, AD, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0020, 0x0010
_OPCODE_MASK = 0x7800

OPT_TYPE = 41
SOA_TYPE = 6
ANY_TYPE = 255
_SIGNATURE_TYPES = frozenset({249, 250})  # TKEY, TSIG: we sign nothing, so nothing of theirs is ours

MAX_MESSAGE = 65535
_OPT_LENGTH = 11  # our OPT RR: root owner, fixed fields, no options

# Rdata layouts that hold domain names (RFC 1035, RFC 3597 section 4): "N" a name, "S" a
# character-string, an int that many fixed bytes. Their names may arrive compressed, so they are
# decompressed when read. Every other type's rdata is copied byte for byte: its names are never
# compressed (RFC 3597, RFC 4034 for RRSIG and NSEC), so it holds no pointer to fix.
_NAME_LAYOUTS: dict[int, tuple[str | int, ...]] = {
    2: ("N",), 3: ("N",), 4: ("N",), 5: ("N",), 7: ("N",), 8: ("N",), 9: ("N",), 12: ("N",),
    39: ("N",),                                         # NS MD MF CNAME MB MG MR PTR DNAME
    6: ("N", "N", 20),                                  # SOA
    14: ("N", "N"), 17: ("N", "N"),                     # MINFO RP
    15: (2, "N"), 18: (2, "N"), 21: (2, "N"), 36: (2, "N"),  # MX AFSDB RT KX
    26: (2, "N", "N"),                                  # PX
    33: (6, "N"),                                       # SRV
    35: (4, "S", "S", "S", "N"),                        # NAPTR
}
# Of those, the types whose rdata names we compress when writing (RFC 1035's; RFC 3597 section 4
# forbids compressing any other type's names).
_COMPRESSIBLE = frozenset({2, 3, 4, 5, 6, 7, 8, 9, 12, 14, 15})


class MalformedReply(ValueError):
    """An upstream reply that cannot be used: truncated, bad names or pointers, counts that lie."""


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------

def read_name(msg: bytes, pos: int) -> tuple[bytes, int]:
    """The name at pos in wire form, decompressed (letter case kept), and the offset just after it.
    A pointer must point before itself, so pointer-only chains cannot loop; labels read after a
    jump grow the name, which stops at 255 bytes."""
    n = len(msg)
    out = bytearray()
    end = -1
    while True:
        if pos >= n:
            raise MalformedReply("name runs past the end of the message")
        length = msg[pos]
        if length == 0:
            out.append(0)
            if end < 0:
                end = pos + 1
            return bytes(out), end
        if length >= 0xC0:
            if pos + 1 >= n:
                raise MalformedReply("truncated compression pointer")
            target = ((length & 0x3F) << 8) | msg[pos + 1]
            if target >= pos:
                raise MalformedReply("compression pointer does not point backwards")
            if end < 0:
                end = pos + 2
            pos = target
            continue
        if length > 63:
            raise MalformedReply("unknown label type 0x%02x" % (length & 0xC0))
        if pos + 1 + length > n:
            raise MalformedReply("label runs past the end of the message")
        out += msg[pos:pos + 1 + length]
        if len(out) > 254:  # with the root byte still to come: > 255
            raise MalformedReply("name longer than 255 bytes")
        pos += 1 + length


def name_to_wire(name: str) -> bytes:
    """'Example.COM.' -> b'\\x07example\\x03com\\x00' (lower case). Plain names only: no escapes."""
    name = name.strip().rstrip(".").lower()
    if not name:
        return b"\x00"
    out = bytearray()
    for label in name.split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) <= 63 or "\\" in label:
            raise ValueError(f"bad name {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"bad name {name!r}: longer than 255 bytes")
    return bytes(out)


def wire_to_text(wire: bytes) -> str:
    """Wire name -> 'example.com.' (for logs and explain; bytes outside printable ASCII as \\DDD)."""
    labels, pos = [], 0
    while pos < len(wire) and wire[pos]:
        label = wire[pos + 1:pos + 1 + wire[pos]]
        labels.append("".join(chr(b) if 0x21 <= b <= 0x7E and b not in (0x2E, 0x5C) else "\\%03d" % b
                              for b in label))
        pos += wire[pos] + 1
    return ".".join(labels) + "."


class _Writer:
    """A message being written, with a compression table of lower-cased name suffixes."""

    __slots__ = ("buf", "names")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.names: dict[bytes, int] = {}

    def remember(self, name: bytes, at: int) -> None:
        """Make the labels of `name`, written as they are at offset `at`, targets for pointers."""
        pos = 0
        while name[pos] and at + pos < 0x4000:
            self.names.setdefault(name[pos:].lower(), at + pos)
            pos += name[pos] + 1

    def name(self, name: bytes, compress: bool) -> None:
        """Append a name; with compress, its longest known suffix becomes a pointer."""
        buf, names, pos = self.buf, self.names, 0
        while name[pos]:
            suffix = name[pos:].lower()
            if compress:
                target = names.get(suffix)
                if target is not None:
                    buf += _U16.pack(0xC000 | target)
                    return
            if len(buf) < 0x4000:
                names.setdefault(suffix, len(buf))
            buf += name[pos:pos + 1 + name[pos]]
            pos += name[pos] + 1
        buf.append(0)


# --------------------------------------------------------------------------------------------
# Upstream side
# --------------------------------------------------------------------------------------------

def upstream_query(qid: int, query: Query, udp_size: int) -> bytes:
    """The query we send upstream: a fresh ID, RD, CD as the client's, the client's question and our
    own OPT (our UDP size, DO as the client's). The client's other EDNS options, ECS above all, are
    never forwarded: the cache is shared by every client."""
    flags = RD | (CD if query.cd else 0)
    dnssec_ok = query.edns is not None and query.edns.dnssec_ok
    return (_HDR.pack(qid, flags, 1, 0, 0, 1) + query.question
            + b"\x00" + _OPT_FIX.pack(OPT_TYPE, udp_size, 0, 0, 0x8000 if dnssec_ok else 0, 0))


def reply_matches(reply: bytes, qid: int, qname_key: bytes, qtype: int, qclass: int) -> bool:
    """Whether `reply` answers our query: same ID, QR set, opcode QUERY, exactly our question (name
    compared case-insensitively, so it has the length of ours; never compressed)."""
    end = 12 + len(qname_key)
    if len(reply) < end + 4:
        return False
    rid, flags, qdcount = _HDR.unpack_from(reply)[:3]
    return (rid == qid and flags & QR and not flags & _OPCODE_MASK and qdcount == 1
            and reply[12:end].lower() == qname_key and _QTAIL.unpack_from(reply, end) == (qtype, qclass))


def is_truncated(reply: bytes) -> bool:
    return bool(reply[2] & (TC >> 8))


@dataclass(frozen=True, slots=True)
class Cleaned:
    """An upstream reply made fit to store: header (ID 0, counts) + its question + the answer and
    authority records we keep, compressed against this layout. Names point at most into the question,
    whose length every client's question for the same name shares."""

    rcode: int  # with the extended bits from the upstream's OPT
    message: bytes
    question_length: int
    ancount: int
    nscount: int
    ttl_offsets: tuple[int, ...]  # offset of every record's TTL field in message
    ttls: tuple[int, ...]  # every record's TTL as received, in the same order
    answered: bool  # the answer section holds the question's type (or anything, for ANY)
    negative_ttl: int | None  # min(SOA TTL, SOA MINIMUM) of the authority section's SOA (RFC 2308)
    soa_index: int | None  # which record (index into ttls) that SOA is
    stripped: int  # records dropped because their owner is in our zone

    @property
    def negative(self) -> bool:
        """NXDOMAIN, or NODATA (no record of the asked type), as RFC 2308 defines them."""
        return self.rcode == NXDOMAIN or (self.rcode == NOERROR and not self.answered)


def clean_reply(reply: bytes, qtype: int, in_zone: Callable[[bytes], bool]) -> Cleaned:
    """Walk a reply that reply_matches() accepted and rebuild it for storing. Keeps the answer and
    authority records whose owner is not in our zone (in_zone gets the lower-cased wire name), drops
    the additional section (a stub needs no glue; forged glue is the usual poison) and the OPT.
    DNSSEC records are kept byte for byte: geotm does not validate, it passes them on.
    Raises MalformedReply (and nothing else) for any defect."""
    try:
        return _clean(reply, qtype, in_zone)
    except (IndexError, struct.error) as exc:  # a bounds check missed: still a bad reply, not a crash
        raise MalformedReply(f"unreadable reply: {exc}") from None


def _clean(reply: bytes, qtype: int, in_zone: Callable[[bytes], bool]) -> Cleaned:
    _, flags, _, ancount, nscount, arcount = _HDR.unpack_from(reply)
    qname, pos = read_name(reply, 12)
    pos = qend = pos + 4
    if qend > len(reply):
        raise MalformedReply("truncated question")
    kept: list[tuple[bytes, int, int, int, tuple[bytes, ...]]] = []
    sections = []
    stripped = 0
    for count in (ancount, nscount):
        records = []
        for _ in range(count):
            owner, rtype, rclass, ttl, rdata, pos = _read_record(reply, pos, parse_rdata=True)
            if rtype == OPT_TYPE:
                raise MalformedReply("OPT record outside the additional section")
            if rtype in _SIGNATURE_TYPES:
                continue
            if in_zone(owner.lower()):
                stripped += 1
                continue
            if ttl > 0x7FFFFFFF:  # RFC 2181 section 8: a TTL with the top bit set means 0
                ttl = 0
            records.append((owner, rtype, rclass, ttl, rdata))
        sections.append(records)
        kept += records
    ext_rcode = 0
    for _ in range(arcount):  # read only for the OPT's extended rcode bits; the rest is dropped
        owner, rtype, _, ttl, _, pos = _read_record(reply, pos, parse_rdata=False)
        if rtype == OPT_TYPE and owner == b"\x00":
            ext_rcode = ttl >> 24
    answer, authority = sections

    writer = _Writer()
    writer.buf += _HDR.pack(0, flags & 0xF, 1, len(answer), len(authority), 0)
    writer.buf += reply[12:qend]
    writer.remember(qname, 12)
    ttl_offsets = []
    ttls = []
    negative_ttl = soa_index = None
    for index, (owner, rtype, rclass, ttl, rdata) in enumerate(kept):
        writer.name(owner, compress=True)
        ttl_offsets.append(len(writer.buf) + 4)
        ttls.append(ttl)
        length_at = len(writer.buf) + 8
        writer.buf += _RRFIX.pack(rtype, rclass, ttl, 0)
        layout = _NAME_LAYOUTS.get(rtype)
        if layout is None:
            writer.buf += rdata[0]
        else:
            for part, piece in zip(layout, rdata):
                if part == "N":
                    writer.name(piece, compress=rtype in _COMPRESSIBLE)
                else:
                    writer.buf += piece
        _U16.pack_into(writer.buf, length_at, len(writer.buf) - length_at - 2)
        if rtype == SOA_TYPE and index >= len(answer) and soa_index is None:
            soa_index = index
            negative_ttl = min(ttl, _U32.unpack_from(rdata[2], 16)[0])
    if len(writer.buf) > MAX_MESSAGE - _OPT_LENGTH:  # with our OPT it must still fit a TCP frame
        raise MalformedReply("rebuilt message too long for 65535 bytes with our OPT")
    answered = any(rtype == qtype or qtype == ANY_TYPE for _, rtype, _, _, _ in answer)
    return Cleaned((ext_rcode << 4) | (flags & 0xF), bytes(writer.buf), qend - 12, len(answer),
                   len(authority), tuple(ttl_offsets), tuple(ttls), answered, negative_ttl, soa_index,
                   stripped)


def _read_record(msg: bytes, pos: int, parse_rdata: bool):
    """-> (owner, type, class, ttl, rdata pieces, position after the record)."""
    owner, pos = read_name(msg, pos)
    if pos + 10 > len(msg):
        raise MalformedReply("truncated record header")
    rtype, rclass, ttl, rdlength = _RRFIX.unpack_from(msg, pos)
    pos += 10
    end = pos + rdlength
    if end > len(msg):
        raise MalformedReply("record data runs past the end of the message")
    if not parse_rdata:
        return owner, rtype, rclass, ttl, (), end
    layout = _NAME_LAYOUTS.get(rtype)
    if layout is None:
        return owner, rtype, rclass, ttl, (msg[pos:end],), end
    pieces = []
    for part in layout:
        if part == "N":
            name, pos = read_name(msg, pos)
            pieces.append(name)
        elif part == "S":
            if pos >= end:
                raise MalformedReply("truncated character-string")
            pieces.append(msg[pos:pos + 1 + msg[pos]])
            pos += 1 + msg[pos]
        else:
            pieces.append(msg[pos:pos + part])
            pos += part
        if pos > end:
            raise MalformedReply(f"type {rtype} rdata shorter than its names and fields")
    if pos != end:
        raise MalformedReply(f"type {rtype} rdata longer than its names and fields")
    return owner, rtype, rclass, ttl, tuple(pieces), end


# --------------------------------------------------------------------------------------------
# Client side
# --------------------------------------------------------------------------------------------

def _flags(query: Query, rcode: int) -> int:
    """QR and RA; RD and CD as the client's; AA and AD clear (we neither own nor validate the data)."""
    flags = QR | RA | (rcode & 0xF)
    if query.rd:
        flags |= RD
    if query.cd:
        flags |= CD
    return flags


def _opt(query: Query, udp_size: int) -> bytes:
    """Our OPT when the client sent one (our UDP size, DO as the client's), else nothing."""
    edns = query.edns
    if edns is None:
        return b""
    return b"\x00" + _OPT_FIX.pack(OPT_TYPE, udp_size, 0, 0, 0x8000 if edns.dnssec_ok else 0, 0)


def client_reply(query: Query, rcode: int, records: bytes, ancount: int, nscount: int, udp_size: int,
                 max_udp_size: int | None) -> bytes:
    """The reply for this client: its ID and its own question bytes (its letter case; the same length
    as the stored question, so pointers into it stay valid), then the stored records. Larger than
    max_udp_size (None: TCP, no limit) -> an empty reply with TC=1, so the client asks over TCP."""
    opt = _opt(query, udp_size)
    flags = _flags(query, rcode)
    arcount = 1 if opt else 0
    if max_udp_size is not None and 12 + len(query.question) + len(records) + len(opt) > max_udp_size:
        return _HDR.pack(query.id, flags | TC, 1, 0, 0, arcount) + query.question + opt
    return b"".join((_HDR.pack(query.id, flags, 1, ancount, nscount, arcount), query.question, records, opt))


def error_reply(query: Query, rcode: int, udp_size: int) -> bytes:
    """Just the question (and our OPT): SERVFAIL when no upstream helped, REFUSED when we must not."""
    opt = _opt(query, udp_size)
    return _HDR.pack(query.id, _flags(query, rcode), 1, 0, 0, 1 if opt else 0) + query.question + opt
