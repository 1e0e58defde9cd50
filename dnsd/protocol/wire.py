"""The DNS wire format: parse queries fast, encode answers, and the only module that imports dnslib.

Four parts:

1. ``parse_query``: a hand-written, bounds-checked parser for one query (the per-query hot path).
   Any defect raises ``WireError`` carrying the rcode and the ready error reply (or None when
   nothing must be sent: short packets and responses, to avoid reflection loops).
2. ``encode_answer``: turns a logical ``Answer`` into a ``PackedAnswer`` (the answer, authority
   and additional sections in wire form) once, at compile time. The body assumes the reply is
   laid out as header (12 bytes) + the query's question + body, so it may point into the qname.
3. ``build_response`` / ``error_response``: glue header + question + body + OPT per query.
4. ``rdata_from_text``: zone-file rdata text -> ``Rdata`` at config compile time (uses dnslib).
"""
from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import re
import struct
import time
from dataclasses import dataclass

import dnslib

from dnsd.answers.answer import BADKEY, FORMERR, NOTAUTH, NOTIMP, SERVFAIL, Answer
from dnsd.answers.records import (
    AAAA,
    CNAME,
    MX,
    NS,
    PTR,
    SOA,
    TXT,
    A,
    AddressRdata,
    MxRdata,
    NameRdata,
    OpaqueRdata,
    Rdata,
    SoaRdata,
    normalize_name,
    type_name,
)

__all__ = [
    "EDNS_UDP_SIZE", "ClientSubnet", "Edns", "Query", "WireError", "parse_query",
    "PackedAnswer", "encode_answer", "build_response", "error_response", "udp_limit",
    "rdata_from_text",
]

# Our advertised EDNS UDP payload size when none is given: the config's server.edns_udp_size (its
# default is this DNS flag day 2020 value, which avoids IP fragmentation) is passed per reply.
EDNS_UDP_SIZE = 1232

_HDR = struct.Struct("!HHHHHH")
_QTAIL = struct.Struct("!HH")  # qtype, qclass
_RRFIX = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_OPTION = struct.Struct("!HH")  # option code, option length
_ECS_HEAD = struct.Struct("!HBB")  # family, source prefix, scope prefix
_OPT_FIX = struct.Struct("!HHBBHH")  # type, udp size, ext-rcode, version, flags, rdlength
_ECS_OPT = struct.Struct("!HHHBB")  # code, length, family, source, scope
_OPT_EMPTY = struct.Struct("!HIxx")  # an OPT's class and ttl, then rdlength 0
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")

_OPT_TYPE = 41
_ECS_CODE = 8
_TSIG_TYPE = 250
_CLASS_ANY = 255

# Header flag bits.
_QR, _AA, _TC, _RD, _CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0010
_OPCODE_MASK = 0x7800


def _opt_rr(ext_rcode: int, dnssec_ok: bool, options: bytes = b"", udp_size: int = EDNS_UDP_SIZE) -> bytes:
    """Our OPT RR: owner root, our UDP size, version 0, DO as given."""
    return b"\x00" + _OPT_FIX.pack(_OPT_TYPE, udp_size, ext_rcode, 0,
                                   0x8000 if dnssec_ok else 0, len(options)) + options


_OPT_PLAIN = _opt_rr(0, False)
_OPT_DO = _opt_rr(0, True)
_OPTS: dict[tuple[int, bool], bytes] = {}  # (udp size, DO) -> our plain OPT, packed once per size


def _plain_opt(udp_size: int, dnssec_ok: bool) -> bytes:
    if udp_size == EDNS_UDP_SIZE:
        return _OPT_DO if dnssec_ok else _OPT_PLAIN
    opt = _OPTS.get((udp_size, dnssec_ok))
    if opt is None:  # sizes are 512-4096 (the config checks), so this stays small
        opt = _OPTS[(udp_size, dnssec_ok)] = _opt_rr(0, dnssec_ok, udp_size=udp_size)
    return opt


# --------------------------------------------------------------------------------------------
# 1. Query parsing (hot path)
# --------------------------------------------------------------------------------------------

@dataclass(slots=True)
class ClientSubnet:
    """EDNS Client Subnet (RFC 7871) as received in a query."""

    family: int  # 1 = IPv4, 2 = IPv6
    source_prefix: int
    address: ipaddress.IPv4Address | ipaddress.IPv6Address  # already masked to source_prefix


@dataclass(slots=True)
class Edns:
    udp_size: int  # the client's advertised size, values < 512 read as 512
    version: int
    dnssec_ok: bool
    ecs: ClientSubnet | None


@dataclass(slots=True)
class Query:
    id: int
    opcode: int
    rd: bool
    cd: bool
    question: bytes  # raw question section as received (case preserved): qname + qtype + qclass
    qname_key: bytes  # qname in wire form, ASCII-lowercased: the key for answer tables
    qtype: int
    qclass: int
    edns: Edns | None

    def qname(self) -> str:
        """Canonical text: lower case, no trailing dot, root = ''. Unusual bytes are escaped
        as in zone files (\\DDD, '\\.'), so ordinary names read as they are configured."""
        key = self.qname_key
        labels = []
        pos = 0
        while key[pos]:
            length = key[pos]
            labels.append(_label_text(key[pos + 1:pos + 1 + length]))
            pos += length + 1
        return ".".join(labels)


_PLAIN_LABEL = re.compile(rb"[a-z0-9_\-*]*\Z")


def _wire_name_text(wire: bytes) -> str:
    labels, pos = [], 0
    while pos < len(wire) and wire[pos]:
        labels.append(_label_text(wire[pos + 1:pos + 1 + wire[pos]].lower()))
        pos += wire[pos] + 1
    return ".".join(labels) + "."


def _label_text(label: bytes) -> str:
    if _PLAIN_LABEL.match(label):
        return label.decode("ascii")
    out = []
    for b in label:
        if b in (0x2E, 0x5C):  # '.' and '\'
            out.append("\\" + chr(b))
        elif 0x21 <= b <= 0x7E:
            out.append(chr(b))
        else:
            out.append("\\%03d" % b)
    return "".join(out)


class WireError(Exception):
    """A query that cannot be answered normally. ``rcode`` is what it deserves (FORMERR,
    NOTIMP); ``reply`` is the ready error reply, or None when nothing must be sent."""

    def __init__(self, message: str, rcode: int, reply: bytes | None) -> None:
        super().__init__(message)
        self.rcode = rcode
        self.reply = reply


class _Bad(Exception):
    """Internal: a defect found while walking the records (carries whether an OPT was seen)."""

    def __init__(self, message: str, opt_seen: bool = False) -> None:
        super().__init__(message)
        self.opt_seen = opt_seen


def _error_reply(qid: int, qflags: int, rcode: int, question: bytes | None,
                 with_opt: bool, tsig: bytes = b"") -> bytes:
    """Header + question (+ OPT) (+ a TSIG RR). RD and CD are defined for QUERY only: a reply to
    another opcode copies just the opcode (genreport flags a NOTIMP that echoes them)."""
    copied = _OPCODE_MASK | _RD | _CD if not qflags & _OPCODE_MASK else _OPCODE_MASK
    flags = _QR | (qflags & copied) | rcode
    header = _HDR.pack(qid, flags, 1 if question else 0, 0, 0, (1 if with_opt else 0) + (1 if tsig else 0))
    return header + (question or b"") + (_OPT_PLAIN if with_opt else b"") + tsig


@dataclass(slots=True)
class _Tsig:
    """The parts of a request's TSIG RR that an unsigned error reply echoes (RFC 8945 5.3.2)."""

    key_name: bytes  # owner, uncompressed wire form
    algorithm: bytes  # uncompressed wire form
    fudge: int
    original_id: int


def _read_name(data: bytes, pos: int, end: int) -> tuple[bytes, int]:
    """A possibly compressed name at pos -> (its uncompressed wire form, offset after it).
    Pointers must point backwards, so a loop cannot be built."""
    out = bytearray()
    after = None
    while True:
        if pos >= end:
            raise _Bad("truncated name in a TSIG record")
        length = data[pos]
        if length >= 0xC0:
            if pos + 2 > end:
                raise _Bad("truncated compression pointer in a TSIG record")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= pos:
                raise _Bad("forward compression pointer in a TSIG record")
            if after is None:
                after = pos + 2
            pos = target
            continue
        if length > 63:
            raise _Bad("bad label type in a TSIG record")
        out += data[pos:pos + length + 1]
        if len(out) > 255:
            raise _Bad("name longer than 255 bytes in a TSIG record")
        if length == 0:
            return bytes(out), after if after is not None else pos + 1
        pos += length + 1


def _parse_tsig(data: bytes, owner_at: int, pos: int, end: int) -> _Tsig:
    key_name, _ = _read_name(data, owner_at, len(data))
    algorithm, pos = _read_name(data, pos, end)
    if pos + 10 > end:
        raise _Bad("truncated TSIG record")
    fudge, mac_size = struct.unpack_from("!HH", data, pos + 6)
    pos += 10 + mac_size
    if pos + 6 > end:
        raise _Bad("truncated TSIG record")
    original_id, _error, other_len = struct.unpack_from("!HHH", data, pos)
    if pos + 6 + other_len != end:
        raise _Bad("TSIG record data has the wrong length")
    return _Tsig(key_name, algorithm, fudge, original_id)


def _badkey_tsig(tsig: _Tsig) -> bytes:
    """The unsigned TSIG RR of a BADKEY reply: the request's key and algorithm, our time, its fudge,
    MAC size 0, its original ID, error BADKEY, no other data."""
    now = int(time.time())
    rdata = (tsig.algorithm + struct.pack("!HIH", now >> 32, now & 0xFFFFFFFF, tsig.fudge)
             + struct.pack("!HHHH", 0, tsig.original_id, BADKEY, 0))
    return tsig.key_name + struct.pack("!HHIH", _TSIG_TYPE, _CLASS_ANY, 0, len(rdata)) + rdata


def _skip_name(data: bytes, pos: int, n: int, opt_seen: bool) -> int:
    """Skip a (possibly compressed) name in a record; return the offset after it."""
    total = 0
    while True:
        if pos >= n:
            raise _Bad("truncated record name", opt_seen)
        length = data[pos]
        if length == 0:
            return pos + 1
        if length >= 0xC0:
            if pos + 2 > n:
                raise _Bad("truncated compression pointer", opt_seen)
            return pos + 2
        if length > 63:
            raise _Bad("bad label type 0x%02x in record name" % (length & 0xC0), opt_seen)
        total += length + 1
        if total > 254:
            raise _Bad("record name longer than 255 bytes", opt_seen)
        pos += length + 1


def _parse_ecs(data: bytes, pos: int, end: int) -> ClientSubnet | None:
    if end - pos < 4:
        raise _Bad("ECS option shorter than 4 bytes", True)
    family, source, scope = _ECS_HEAD.unpack_from(data, pos)
    addr = data[pos + 4:end]
    if family == 0:
        if source or scope or addr:
            raise _Bad("ECS family 0 with a prefix or address", True)
        return None
    if family == 1:
        maxbits = 32
    elif family == 2:
        maxbits = 128
    else:
        raise _Bad("ECS unknown family %d" % family, True)
    if source > maxbits:
        raise _Bad("ECS source prefix %d > %d" % (source, maxbits), True)
    if scope:
        raise _Bad("ECS scope prefix %d in a query (must be 0)" % scope, True)
    nbytes = (source + 7) >> 3
    if len(addr) != nbytes:
        raise _Bad("ECS address is %d bytes, source prefix %d needs %d"
                   % (len(addr), source, nbytes), True)
    if source & 7 and addr[-1] & (0xFF >> (source & 7)):
        raise _Bad("ECS address has bits set beyond the source prefix", True)
    value = int.from_bytes(addr, "big") << ((maxbits >> 3) - nbytes) * 8
    if family == 1:
        return ClientSubnet(1, source, ipaddress.IPv4Address(value))
    return ClientSubnet(2, source, ipaddress.IPv6Address(value))


def _parse_opt(data: bytes, pos: int, end: int, rclass: int, ttl: int) -> Edns:
    version = (ttl >> 16) & 0xFF
    ecs = None
    if version == 0:  # options of other versions have unknown meaning: the engine says BADVERS
        seen_ecs = False
        while pos < end:
            if pos + 4 > end:
                raise _Bad("truncated EDNS option header", True)
            code, olen = _OPTION.unpack_from(data, pos)
            pos += 4
            oend = pos + olen
            if oend > end:
                raise _Bad("EDNS option %d overruns the OPT record" % code, True)
            if code == _ECS_CODE:
                if seen_ecs:
                    raise _Bad("more than one ECS option", True)
                seen_ecs = True
                ecs = _parse_ecs(data, pos, oend)
            pos = oend
    return Edns(rclass if rclass > 512 else 512, version, bool(ttl & 0x8000), ecs)


def _walk_records(data: bytes, pos: int, n: int, nother: int, nadd: int) -> tuple[Edns | None, _Tsig | None]:
    """Walk answer/authority (nother) and additional (nadd) records; return the EDNS and TSIG info."""
    edns = None
    tsig = None
    opt_seen = False
    for i in range(nother + nadd):
        owner_at = pos
        if pos < n and data[pos] == 0:
            root = True
            pos += 1
        else:
            root = False
            pos = _skip_name(data, pos, n, opt_seen)
        if pos + 10 > n:
            raise _Bad("truncated record", opt_seen)
        rtype, rclass, ttl, rdlen = _RRFIX.unpack_from(data, pos)
        pos += 10
        rdend = pos + rdlen
        if rdend > n:
            raise _Bad("record data overruns the packet", opt_seen)
        if rtype == _OPT_TYPE:
            if i < nother:
                raise _Bad("OPT record outside the additional section", opt_seen)
            if opt_seen:
                raise _Bad("more than one OPT record", True)
            opt_seen = True
            if not root:
                raise _Bad("OPT record owner is not the root", True)
            edns = _parse_opt(data, pos, rdend, rclass, ttl)
        elif rtype == _TSIG_TYPE:
            if i != nother + nadd - 1:  # RFC 8945 5.1: only as the last record of the message
                raise _Bad("TSIG record is not the last record", opt_seen)
            try:
                tsig = _parse_tsig(data, owner_at, pos, rdend)
            except _Bad as exc:
                raise _Bad(str(exc), opt_seen) from None
        pos = rdend
    if pos != n:
        raise _Bad("%d bytes of trailing garbage after the last record" % (n - pos), opt_seen)
    return edns, tsig


def parse_query(data: bytes) -> Query:
    """Parse one DNS query. Raises WireError (and only WireError) for any defect."""
    n = len(data)
    if n < 12:
        raise WireError("short header: %d bytes" % n, FORMERR, None)
    qid, flags, qdcount, ancount, nscount, arcount = _HDR.unpack_from(data)
    if flags & _QR:
        raise WireError("QR bit set: a response, not a query", FORMERR, None)

    # The question (only when there is exactly one; we never echo several).
    question = None
    qerr = None
    pos = 12
    if qdcount == 1:
        while True:
            if pos >= n:
                qerr = "truncated question"
                break
            length = data[pos]
            if length == 0:
                pos += 1
                break
            if length > 63:
                if length >= 0xC0:
                    qerr = "compression pointer in the question"
                else:
                    qerr = "label length %d > 63 (or extended label type)" % length
                break
            pos += length + 1
            if pos > 266:  # 254 bytes of labels + the root byte = 255
                qerr = "qname longer than 255 bytes"
                break
        if qerr is None:
            if pos + 4 > n:
                qerr = "truncated question"
            else:
                qname_end = pos
                pos += 4
                question = data[12:pos]

    # The records (also for NOTIMP, to know whether the client speaks EDNS).
    edns = None
    tsig = None
    rerr = None
    opt_seen = False
    if qerr is None and qdcount <= 1:
        if not (ancount or nscount or arcount):  # fast path: a plain query without EDNS
            if pos != n:
                rerr = "%d bytes of trailing garbage after the question" % (n - pos)
        elif (arcount == 1 and not (ancount or nscount) and pos + 11 == n and data[pos] == 0
              and data[pos + 1] == 0 and data[pos + 2] == _OPT_TYPE
              and data[pos + 9] == 0 and data[pos + 10] == 0):
            # fast path: one OPT with no options (rdlength 0), ending the packet
            opt_seen = True
            rclass, ttl = _OPT_EMPTY.unpack_from(data, pos + 3)
            edns = Edns(rclass if rclass > 512 else 512, (ttl >> 16) & 0xFF, bool(ttl & 0x8000),
                        None)
        else:
            try:
                edns, tsig = _walk_records(data, pos, n, ancount + nscount, arcount)
                opt_seen = edns is not None
            except _Bad as exc:
                rerr = str(exc)
                opt_seen = exc.opt_seen

    opcode = (flags >> 11) & 0xF
    if tsig is not None and rerr is None and qdcount <= 1 and not (ancount or nscount):
        # we hold no TSIG keys: every signed request is signed with a key we do not know
        raise WireError("TSIG key %s is unknown (BADKEY)" % _wire_name_text(tsig.key_name), NOTAUTH,
                        _error_reply(qid, flags, NOTAUTH, question, opt_seen, _badkey_tsig(tsig)))
    if opcode != 0:
        raise WireError("opcode %d not implemented" % opcode, NOTIMP,
                        _error_reply(qid, flags, NOTIMP, question, opt_seen))
    if qdcount != 1:
        raise WireError("QDCOUNT is %d, expected 1" % qdcount, FORMERR,
                        _error_reply(qid, flags, FORMERR, None, opt_seen))
    if qerr is not None:
        raise WireError(qerr, FORMERR, _error_reply(qid, flags, FORMERR, None, False))
    if ancount or nscount:
        raise WireError("ANCOUNT %d / NSCOUNT %d in a query, expected 0" % (ancount, nscount),
                        FORMERR, _error_reply(qid, flags, FORMERR, question, opt_seen))
    if rerr is not None:
        raise WireError(rerr, FORMERR, _error_reply(qid, flags, FORMERR, question, opt_seen))

    qtype, qclass = _QTAIL.unpack_from(data, qname_end)
    return Query(qid, 0, bool(flags & _RD), bool(flags & _CD), question,
                 data[12:qname_end].lower(), qtype, qclass, edns)


# --------------------------------------------------------------------------------------------
# 2. Encoding answers (compile time)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PackedAnswer:
    rcode: int  # 0..4095 (extended rcodes like BADVERS=16 need EDNS)
    authoritative: bool
    body: bytes  # answer + authority + additional RRs, wire format
    ancount: int
    nscount: int
    arcount: int
    client_dependent: bool  # copied from Answer.client_dependent


def _name_labels(name: str) -> list[bytes]:
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
            if len(digits) == 3 and _is_num(digits) and int(digits) <= 255:
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


@functools.lru_cache(maxsize=16384)
def _name_wire(name: str) -> tuple[bytes, tuple[int, ...]]:
    """A name's uncompressed wire form (lower case) and the offset of each label in it. Every
    suffix wire[offset:] is then the unambiguous key for the compression table."""
    out = bytearray()
    offsets = []
    for label in _name_labels(name):
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


# --------------------------------------------------------------------------------------------
# 3. Replies (hot path)
# --------------------------------------------------------------------------------------------

def udp_limit(query: Query, udp_size: int = EDNS_UDP_SIZE) -> int:
    """The largest UDP reply we may send: 512 without EDNS, else the client's size capped at
    ours, udp_size (the floor of 512 is already applied when parsing)."""
    edns = query.edns
    if edns is None:
        return 512
    size = edns.udp_size
    return udp_size if size > udp_size else (size if size > 512 else 512)


def _ecs_option(ecs: ClientSubnet, scope: int) -> bytes:
    source = ecs.source_prefix
    if ecs.family == 1:
        if scope > 32:
            scope = 32
    elif scope > 128:
        scope = 128
    if scope < 0:
        scope = 0
    addr = ecs.address.packed[:(source + 7) >> 3]
    return _ECS_OPT.pack(_ECS_CODE, 4 + len(addr), ecs.family, source, scope) + addr


def build_response(query: Query, packed: PackedAnswer, *, max_udp_size: int | None,
                   ecs_scope: int | None, udp_size: int = EDNS_UDP_SIZE) -> bytes:
    """header + the query's question + packed body (+ OPT advertising udp_size when the query had EDNS).

    max_udp_size None means TCP (no limit); otherwise an oversized reply is sent with TC=1 and
    only the question (and the OPT). An rcode above 15 without EDNS is sent as SERVFAIL."""
    rcode = packed.rcode
    edns = query.edns
    flags = _QR
    if packed.authoritative:
        flags |= _AA
    if query.rd:
        flags |= _RD
    if query.cd:
        flags |= _CD
    if edns is None:
        opt = b""
        if rcode > 15:
            rcode = SERVFAIL
    else:
        ecs = edns.ecs
        if ecs is not None and ecs_scope is not None:
            opt = _opt_rr(rcode >> 4, edns.dnssec_ok, _ecs_option(ecs, ecs_scope), udp_size)
        elif rcode < 16:
            opt = _plain_opt(udp_size, edns.dnssec_ok)
        else:
            opt = _opt_rr(rcode >> 4, edns.dnssec_ok, udp_size=udp_size)
    question = query.question
    body = packed.body
    if max_udp_size is not None and 12 + len(question) + len(body) + len(opt) > max_udp_size:
        return _HDR.pack(query.id, flags | _TC | (rcode & 15), 1, 0, 0,
                         1 if opt else 0) + question + opt
    header = _HDR.pack(query.id, flags | (rcode & 15), 1, packed.ancount, packed.nscount,
                       packed.arcount + 1 if opt else packed.arcount)
    return b"".join((header, question, body, opt))


def error_response(query: Query, rcode: int, udp_size: int = EDNS_UDP_SIZE) -> bytes:
    """A reply with just the question (and OPT when the query had EDNS), AA=0, RD/CD copied.
    Extended rcodes (BADVERS=16) go in the OPT; without EDNS they are sent as SERVFAIL."""
    flags = _QR | (query.opcode << 11)
    if query.rd:
        flags |= _RD
    if query.cd:
        flags |= _CD
    edns = query.edns
    if edns is None:
        opt = b""
        if rcode > 15:
            rcode = SERVFAIL
    elif rcode < 16:
        opt = _plain_opt(udp_size, edns.dnssec_ok)
    else:
        opt = _opt_rr(rcode >> 4, edns.dnssec_ok, udp_size=udp_size)
    header = _HDR.pack(query.id, flags | (rcode & 15), 1, 0, 0, 1 if opt else 0)
    return header + query.question + opt


# --------------------------------------------------------------------------------------------
# 4. Rdata from zone-file text (config compile time; dnslib lives here only)
# --------------------------------------------------------------------------------------------

def _is_num(s: str) -> bool:
    return s.isascii() and s.isdigit()


class _Token:
    __slots__ = ("raw", "value", "quoted")

    def __init__(self, raw: str, value: bytes, quoted: bool) -> None:
        self.raw = raw  # exactly as written (quotes and escapes kept)
        self.value = value  # quotes removed, escapes resolved (\DDD decimal), UTF-8 bytes
        self.quoted = quoted

    def text(self) -> str:
        return self.value.decode("utf-8")


def _tokenize(text: str) -> list[_Token]:
    """Split rdata text into zone-file tokens: whitespace separates, "..." quotes (also inside
    a token, as in alpn="h2,h3"), backslash escapes (\\DDD decimal or the next character),
    ';' starts a comment, '(' and ')' group lines and are dropped."""
    tokens = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c.isspace() or c in "()":
            i += 1
            continue
        if c == ";":
            while i < n and text[i] != "\n":
                i += 1
            continue
        start = i
        value = bytearray()
        quoted = False
        in_quote = False
        while i < n:
            c = text[i]
            if c == "\\":
                if _is_num(text[i + 1:i + 4]) and len(text[i + 1:i + 4]) == 3:
                    code = int(text[i + 1:i + 4])
                    if code > 255:
                        raise ValueError(f"escape \\{text[i + 1:i + 4]} is above 255")
                    value.append(code)
                    i += 4
                elif i + 1 < n:
                    value += text[i + 1].encode("utf-8")
                    i += 2
                else:
                    raise ValueError("dangling backslash")
                continue
            if c == '"':
                in_quote = not in_quote
                quoted = True
                i += 1
                continue
            if not in_quote and (c.isspace() or c in "();"):
                break
            value += c.encode("utf-8")
            i += 1
        if in_quote:
            raise ValueError("unterminated quoted string")
        tokens.append(_Token(text[start:i], bytes(value), quoted))
    return tokens


def _absolute(name: str, origin: str) -> str:
    """A name from rdata text -> canonical absolute name ('@' = origin, no dot = relative)."""
    if name == "@":
        result = origin
    elif name == ".":
        result = ""
    elif name.endswith("."):
        result = name[:-1]
    else:
        result = name + "." + origin if origin else name
    result = normalize_name(result)
    if result:
        _name_labels(result)  # validates
    return result


_TIME_PART = re.compile(r"(\d+)([smhdwSMHDW])")
_TIME_SPEC = re.compile(r"(?:\d+[smhdwSMHDW])+")
_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _u32(token: str, allow_units: bool) -> int:
    """An unsigned 32-bit number; with allow_units also BIND-style times like '1h30m'."""
    if _is_num(token):
        value = int(token)
    elif allow_units and _TIME_SPEC.fullmatch(token):
        value = sum(int(num) * _TIME_UNITS[unit.lower()] for num, unit in _TIME_PART.findall(token))
    else:
        raise ValueError(f"{token!r} is not a number")
    if value > 0xFFFFFFFF:
        raise ValueError(f"{token!r} is above 4294967295")
    return value


def _quote_charstr(data: bytes) -> str:
    out = ['"']
    for b in data:
        if b == 0x22 or b == 0x5C:
            out.append("\\" + chr(b))
        elif 0x20 <= b <= 0x7E:
            out.append(chr(b))
        else:
            out.append("\\%03d" % b)
    out.append('"')
    return "".join(out)


# Types whose text dnslib parses; name_positions are tokens holding domain names that we make
# absolute before dnslib sees them (dnslib does not apply the origin for most of them).
# rtype -> (dnslib class name, expected form, min tokens, max tokens or None, name positions)
_DNSLIB_FORMS: dict[int, tuple[str, str, int, int | None, tuple[int, ...]]] = {
    33: ("SRV", "PRIORITY WEIGHT PORT TARGET", 4, 4, (3,)),
    35: ("NAPTR", 'ORDER PREFERENCE "FLAGS" "SERVICES" "REGEXP" REPLACEMENT', 6, 6, (5,)),
    64: ("HTTPS", "PRIORITY TARGET [KEY=VALUE ...]", 2, None, (1,)),  # SVCB: same rdata as HTTPS
    65: ("HTTPS", "PRIORITY TARGET [KEY=VALUE ...]", 2, None, (1,)),
    44: ("SSHFP", "ALGORITHM FP-TYPE HEX-FINGERPRINT", 3, None, ()),
    52: ("TLSA", "USAGE SELECTOR MATCHING-TYPE HEX-DATA", 4, None, ()),
    43: ("DS", "KEY-TAG ALGORITHM DIGEST-TYPE HEX-DIGEST", 4, None, ()),
    48: ("DNSKEY", "FLAGS PROTOCOL ALGORITHM BASE64-KEY", 4, None, ()),
    17: ("RP", "MBOX-NAME TXT-NAME", 2, 2, (0, 1)),
    39: ("CNAME", "TARGET", 1, 1, (0,)),  # DNAME: one uncompressed name
}
_META_TYPES = frozenset({0, 41, 249, 250, 251, 252, 253, 254, 255})
_HEX_FORMS = (44, 52, 43)


def rdata_from_text(rtype: int, text: str, origin: str) -> Rdata:
    """Zone-file rdata text -> Rdata. Relative names are made absolute against origin ('@' is
    the origin). Raises ValueError with a one-line message for bad text."""
    if not isinstance(rtype, int) or not 0 <= rtype <= 0xFFFF or rtype in _META_TYPES:
        raise ValueError(f"type {type_name(rtype) if isinstance(rtype, int) else rtype!r} "
                         "cannot have record data")
    tname = type_name(rtype)
    origin = normalize_name(origin)
    try:
        tokens = _tokenize(text)
    except (ValueError, UnicodeError) as exc:
        raise ValueError(f"bad {tname} rdata {text!r}: {exc}") from None

    def bad(expected: str) -> ValueError:
        return ValueError(f"bad {tname} rdata {text!r}: expected {expected}")

    try:
        if rtype == A or rtype == AAAA:
            expected = "an IPv4 address" if rtype == A else "an IPv6 address"
            if len(tokens) != 1 or "%" in tokens[0].raw:
                raise bad(expected)
            try:
                address = ipaddress.ip_address(tokens[0].text())
            except ValueError:
                raise bad(expected) from None
            if address.version != (4 if rtype == A else 6):
                raise bad(expected)
            return AddressRdata(address)
        if rtype in (CNAME, NS, PTR):
            if len(tokens) != 1:
                raise bad("'TARGET' (one domain name)")
            try:
                return NameRdata(_absolute(tokens[0].text(), origin))
            except ValueError as exc:
                raise bad(f"'TARGET' (one domain name): {exc}") from None
        if rtype == MX:
            form = "'PREFERENCE EXCHANGE'"
            if len(tokens) != 2 or not _is_num(tokens[0].raw) or int(tokens[0].raw) > 0xFFFF:
                raise bad(form)
            try:
                return MxRdata(int(tokens[0].raw), _absolute(tokens[1].text(), origin))
            except ValueError as exc:
                raise bad(f"{form}: {exc}") from None
        if rtype == SOA:
            form = "'MNAME RNAME SERIAL REFRESH RETRY EXPIRE MINIMUM'"
            if len(tokens) != 7:
                raise bad(form)
            try:
                mname = _absolute(tokens[0].text(), origin)
                rname = _absolute(tokens[1].text(), origin)
                serial = _u32(tokens[2].raw, False)
                timers = [_u32(t.raw, True) for t in tokens[3:]]
            except ValueError as exc:
                raise bad(f"{form}: {exc}") from None
            return SoaRdata(mname, rname, serial, *timers)
        if tokens and tokens[0].raw == "\\#":
            return _generic_rdata(tokens, bad)
        if rtype in (TXT, 99):  # TXT, SPF
            return _txt_rdata(tokens, bad)
        if rtype == 13:  # HINFO: exactly two character-strings
            if len(tokens) != 2 or any(len(t.value) > 255 for t in tokens):
                raise bad("'CPU OS' (two strings of at most 255 bytes)")
            wire = b"".join(bytes([len(t.value)]) + t.value for t in tokens)
            return OpaqueRdata(wire, " ".join(_quote_charstr(t.value) for t in tokens))
        if rtype == 257:
            return _caa_rdata(tokens, bad)
        form = _DNSLIB_FORMS.get(rtype)
        if form is None:
            raise bad(f"RFC 3597 '\\# LENGTH HEX' ({tname} has no known text form)")
        return _dnslib_rdata(rtype, tokens, origin, form, bad)
    except UnicodeError:
        raise bad("UTF-8 text") from None


def _generic_rdata(tokens: list[_Token], bad) -> OpaqueRdata:
    form = "'\\# LENGTH HEX'"
    if len(tokens) < 2 or not _is_num(tokens[1].raw):
        raise bad(form)
    length = int(tokens[1].raw)
    hexdata = "".join(t.raw for t in tokens[2:])
    try:
        wire = binascii.unhexlify(hexdata)
    except (binascii.Error, ValueError):
        raise bad(f"{form} with valid hex") from None
    if len(wire) != length or length > 0xFFFF:
        raise bad(f"{form}: {len(wire)} bytes of data but LENGTH says {length}")
    return OpaqueRdata(wire, f"\\# {length} {wire.hex().upper()}".rstrip())


def _txt_rdata(tokens: list[_Token], bad) -> OpaqueRdata:
    if not tokens:
        raise bad('one or more "STRINGS"')
    chunks = []
    for tok in tokens:
        value = tok.value
        if not value:
            chunks.append(b"")
        for i in range(0, len(value), 255):  # long strings split into 255-byte strings
            chunks.append(value[i:i + 255])
    wire = _dnslib_pack(dnslib.TXT(chunks))
    if len(wire) > 0xFFFF:
        raise bad("at most 65535 bytes of TXT data")
    return OpaqueRdata(wire, " ".join(_quote_charstr(c) for c in chunks))


_CAA_TAG = re.compile(r"[A-Za-z0-9]+\Z")


def _caa_rdata(tokens: list[_Token], bad) -> OpaqueRdata:
    form = "'FLAGS TAG \"VALUE\"'"
    if len(tokens) != 3 or not _is_num(tokens[0].raw) or int(tokens[0].raw) > 255 \
            or not _CAA_TAG.match(tokens[1].raw) or len(tokens[1].raw) > 255:
        raise bad(form)
    flags, tag, value = int(tokens[0].raw), tokens[1].raw, tokens[2].text()
    rd = dnslib.CAA(flags, tag, value)  # built directly: dnslib's fromZone drops inner quotes
    return OpaqueRdata(_dnslib_pack(rd), f"{flags} {tag} {_quote_charstr(tokens[2].value)}")


def _dnslib_rdata(rtype: int, tokens: list[_Token], origin: str, form, bad) -> OpaqueRdata:
    cls_name, expected, least, most, name_positions = form
    expected = f"'{expected}'"
    if len(tokens) < least or (most is not None and len(tokens) > most):
        raise bad(expected)
    args = []
    for i, tok in enumerate(tokens):
        if i in name_positions:
            try:
                name = _absolute(tok.text(), origin)
            except ValueError as exc:
                raise bad(f"{expected}: {exc}") from None
            args.append(name + "." if name else ".")
        elif cls_name == "DNSKEY" and i >= 3:
            try:
                base64.b64decode(tok.raw, validate=True)
            except (binascii.Error, ValueError):
                raise bad(f"{expected} (bad base64)") from None
            args.append(tok.raw)
        elif cls_name == "HTTPS":
            raw = tok.raw  # dnslib parses SvcParam quoting and escapes itself
            if raw.startswith("ech="):
                raw = "echconfig=" + raw[4:]  # RFC 9460 name; dnslib knows the draft's name
            args.append(raw)
        else:
            args.append(tok.text())
    rd_cls = getattr(dnslib, cls_name)
    try:
        rd = rd_cls.fromZone(args, dnslib.DNSLabel(origin + "." if origin else "."))
        wire = _dnslib_pack(rd)
        text = rd.toZone()
        if cls_name == "HTTPS":
            text = text.replace(" echconfig=", " ech=")  # RFC 9460's name for key 5
    except Exception as exc:  # dnslib raises anything from int() to DNSError: all mean bad text
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise bad(f"{expected} ({detail})") from None
    if rtype in _HEX_FORMS and not wire[{44: 2, 52: 3, 43: 4}[rtype]:]:
        raise bad(f"{expected} (empty hex data)")
    if len(wire) > 0xFFFF:
        raise bad(f"{expected} (longer than 65535 bytes)")
    return OpaqueRdata(wire, text)


class _NoNames(dict):
    """A name table that never remembers: dnslib's encode_name then cannot compress, as rdata
    packed on its own must not (its pointers would be relative to the rdata, not the message)."""

    def __setitem__(self, key, value) -> None:
        pass


def _dnslib_pack(rd) -> bytes:
    buf = dnslib.DNSBuffer()
    buf.names = _NoNames()
    rd.pack(buf)
    return bytes(buf.data)
