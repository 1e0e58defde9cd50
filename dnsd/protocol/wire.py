"""The DNS wire format per query: parse a query fast, write its reply. No dnslib.

Two parts:

1. ``parse_query``: a hand-written, bounds-checked parser for one query (the per-query hot path).
   Any defect raises ``WireError`` carrying the rcode and the makings of the error reply (none when
   nothing must be sent: short packets and responses, to avoid reflection loops).
2. ``build_response`` / ``error_response``: glue header + question + packed body + OPT per query
   (the bodies are packed once, at compile time, by dnsd.answers.encode).
"""
from __future__ import annotations

import ipaddress
import re
import struct
import time
from dataclasses import dataclass

from dnsd.answers.answer import BADKEY, FORMERR, NOTAUTH, NOTIMP, SERVFAIL
from dnsd.answers.encode import PackedAnswer

__all__ = [
    "EDNS_UDP_SIZE", "ClientSubnet", "Edns", "Query", "WireError", "parse_query",
    "build_response", "error_response", "udp_limit",
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
    """A query that cannot be answered normally. ``rcode`` is what it deserves (FORMERR, NOTIMP,
    NOTAUTH); ``reply(udp_size)`` is the error reply, its OPT (if any) advertising our udp_size, or
    None when nothing must be sent. Built on demand, as only the caller knows our configured size."""

    def __init__(self, message: str, rcode: int,
                 reply_parts: tuple[int, int, bytes | None, bool, bytes] | None) -> None:
        super().__init__(message)
        self.rcode = rcode
        # (query ID, query flags, question to echo or None, OPT wanted, TSIG RR or b""): a plain tuple,
        # as a malformed flood makes one per packet
        self._reply_parts = reply_parts

    def reply(self, udp_size: int) -> bytes | None:
        parts = self._reply_parts
        if parts is None:
            return None
        qid, qflags, question, with_opt, tsig = parts
        return _error_reply(qid, qflags, self.rcode, question, with_opt, udp_size, tsig)


class _Bad(Exception):
    """Internal: a defect found while walking the records (carries whether an OPT was seen)."""

    def __init__(self, message: str, opt_seen: bool = False) -> None:
        super().__init__(message)
        self.opt_seen = opt_seen


def _error_reply(qid: int, qflags: int, rcode: int, question: bytes | None,
                 with_opt: bool, udp_size: int, tsig: bytes = b"") -> bytes:
    """Header + question (+ OPT) (+ a TSIG RR). RD and CD are defined for QUERY only: a reply to
    another opcode copies just the opcode (genreport flags a NOTIMP that echoes them)."""
    copied = _OPCODE_MASK | _RD | _CD if not qflags & _OPCODE_MASK else _OPCODE_MASK
    flags = _QR | (qflags & copied) | rcode
    header = _HDR.pack(qid, flags, 1 if question else 0, 0, 0, (1 if with_opt else 0) + (1 if tsig else 0))
    return header + (question or b"") + (_plain_opt(udp_size, False) if with_opt else b"") + tsig


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
                        (qid, flags, question, opt_seen, _badkey_tsig(tsig)))
    if opcode != 0:
        raise WireError("opcode %d not implemented" % opcode, NOTIMP,
                        (qid, flags, question, opt_seen, b""))
    if qdcount != 1:
        raise WireError("QDCOUNT is %d, expected 1" % qdcount, FORMERR,
                        (qid, flags, None, opt_seen, b""))
    if qerr is not None:
        raise WireError(qerr, FORMERR, (qid, flags, None, False, b""))
    if ancount or nscount:
        raise WireError("ANCOUNT %d / NSCOUNT %d in a query, expected 0" % (ancount, nscount),
                        FORMERR, (qid, flags, question, opt_seen, b""))
    if rerr is not None:
        raise WireError(rerr, FORMERR, (qid, flags, question, opt_seen, b""))

    qtype, qclass = _QTAIL.unpack_from(data, qname_end)
    return Query(qid, 0, bool(flags & _RD), bool(flags & _CD), question,
                 data[12:qname_end].lower(), qtype, qclass, edns)


# --------------------------------------------------------------------------------------------
# 2. Replies (hot path)
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
