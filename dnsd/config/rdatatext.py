"""Zone-file rdata text -> ``Rdata``, at config time (records in the config); dnslib packs the types we do
not pack ourselves, so only this module loads it."""
from __future__ import annotations

import base64
import binascii
import ipaddress
import re

import dnslib

from dnsd.records import (
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
    name_labels,
    normalize_name,
    type_name,
)

__all__ = ["rdata_from_text"]


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
        name_labels(result)  # validates
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
