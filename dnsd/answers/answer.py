"""The logical result of resolving one question: rcode, sections and why. No wire format here."""
from __future__ import annotations

from dataclasses import dataclass, field

from dnsd.records import RR

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
NOTAUTH = 9  # a TSIG-signed request with a key we do not have (RFC 8945 section 5.2)
BADVERS = 16  # extended rcode, only expressible with EDNS
BADKEY = 17  # TSIG error field: unknown key (RFC 8945)
RCODE_NAMES = {NOERROR: "NOERROR", FORMERR: "FORMERR", SERVFAIL: "SERVFAIL", NXDOMAIN: "NXDOMAIN",
               NOTIMP: "NOTIMP", REFUSED: "REFUSED", NOTAUTH: "NOTAUTH", BADVERS: "BADVERS"}


@dataclass(frozen=True, slots=True)
class Answer:
    rcode: int
    answer: tuple[RR, ...] = ()
    authority: tuple[RR, ...] = ()
    additional: tuple[RR, ...] = ()
    authoritative: bool = True
    # True when the answer depends on the client's address (view or region choice):
    # with ECS the reply then carries scope = the query's source prefix, else scope 0.
    client_dependent: bool = False
    # Human-readable steps that led here (for explain and logs), never sent on the wire.
    trace: tuple[str, ...] = field(default=(), compare=False)
