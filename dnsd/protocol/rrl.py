"""Response rate limiting (RRL) of UDP answers: per client prefix and response class a token bucket;
over the rate an answer is dropped or slipped (TC=1, question only). Pure: bytes and a clock in, a
verdict out; it classifies the reply from its own bytes, so it does not care where the answer came from.

As BIND's rate-limit and Knot's mod-rrl (their docs are the reference):

* client prefix: the source address cut to ipv4_prefix_length / ipv6_prefix_length bits (/24, /56),
  so a spoofer cannot escape the limit by varying the low bits; `exempt` networks are never limited;
* response class, from the reply: NOERROR answers are identical when qname (case-folded: 0x20
  randomisation must not make new classes) and qtype match; every NXDOMAIN of one zone is one class
  (the zone is the owner of the SOA in the authority section), so random subdomains share a bucket;
  every other rcode (REFUSED, SERVFAIL, FORMERR, NOTIMP...) of a prefix is one class;
* token bucket: `rate` tokens per second, at most `rate` at once; an answer takes a token; without
  one the answer is limited: every `slip`-th limited answer of the bucket goes out as an empty
  truncated reply (a real resolver retries over TCP, which is never limited), the others are
  dropped; slip 0 drops them all. Refill is lazy (see ResponseRateLimiter): right after a quiet
  spell up to twice the rate may pass at once, never more;
* memory: at most `table_size` buckets (and as many front-cache entries). A bucket not refilled for
  a second is not being limited, so forgetting it costs at most one fresh burst: when the table is
  full those go first; if a flood of fresh sources left more than half, the oldest half goes.
"""
from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from itertools import islice

import structlog

from dnsd.model import RateLimitSettings

log = structlog.get_logger(__name__)

NOERROR, NXDOMAIN, ERROR = 0, 1, 2
CLASS_NAMES = ("noerror", "nxdomain", "error")

EPISODE_GAP = 15.0  # a prefix limited again after this long without limits logs a new rate_limited
START_LOGS_PER_SECOND = 10  # across all prefixes, so a spoofed flood over many prefixes cannot flood the log
_PREFIX_MEMO_SIZE = 65_536  # client address -> prefix key, cleared whole when full
_EPISODES_SIZE = 10_000  # prefixes currently being limited (for the start log), cleared whole when full
# Front cache key: the reply from the rcode's byte to here (counts, question, start of the answer).
# Two replies alike up to here share a bucket: for qnames over ~60 bytes that may merge two classes
# (stricter, never looser).
_FRONT_KEY_END = 76
_V6_TAG = 1 << 128  # v6 prefix keys are offset so they never equal a v4 key
_MISSING = object()


def question_end(msg: bytes) -> int:
    """Offset just past the first question's QTYPE/QCLASS (12 when there is none); -1 when malformed."""
    if msg[4:6] == b"\0\0":
        return 12
    pos, n = 12, len(msg)
    while pos < n:
        length = msg[pos]
        if length == 0:
            return pos + 5 if pos + 5 <= n else -1
        if length > 63:
            return -1
        pos += length + 1
    return -1


def _read_name(msg: bytes, pos: int) -> bytes | None:
    """The (possibly compressed) name at pos as uncompressed wire bytes, lower case; None if malformed."""
    out = bytearray()
    n = len(msg)
    for _ in range(128):  # bounds pointer loops
        if pos >= n:
            return None
        length = msg[pos]
        if length == 0:
            return bytes(out + b"\0").lower()
        if length >= 0xC0:
            if pos + 1 >= n:
                return None
            pos = ((length & 0x3F) << 8) | msg[pos + 1]
            continue
        if length > 63 or pos + 1 + length > n:
            return None
        out += msg[pos:pos + 1 + length]
        pos += 1 + length
    return None


def _skip_record(msg: bytes, pos: int) -> int:
    """Offset past the resource record at pos; -1 when malformed."""
    n = len(msg)
    while pos < n:
        length = msg[pos]
        if length >= 0xC0:
            pos += 2
            break
        pos += length + 1
        if length == 0:
            break
    if pos + 10 > n:
        return -1
    return pos + 10 + ((msg[pos + 8] << 8) | msg[pos + 9])


def nxdomain_zone(reply: bytes) -> bytes:
    """The zone an NXDOMAIN reply speaks for: the owner of the first authority record (the SOA), as
    lower-case wire bytes. b"" when there is none (then every NXDOMAIN of the prefix is one class)."""
    end = question_end(reply)
    if end < 0 or reply[8:10] == b"\0\0":
        return b""
    pos = end
    for _ in range((reply[6] << 8) | reply[7]):  # a CNAME chain may come before the authority
        pos = _skip_record(reply, pos)
        if pos < 0:
            return b""
    if pos + 1 >= len(reply):
        return b""
    first = reply[pos]
    if first >= 0xC0:
        pointer = ((first & 0x3F) << 8) | reply[pos + 1]
        if 12 <= pointer < end - 4:  # the usual case: a pointer into the question's zone suffix
            return reply[pointer:end - 4].lower()
    return _read_name(reply, pos) or b""


def slip_reply(reply: bytes) -> bytes:
    """The reply cut to its header and question, TC set, no records: the same ID, flags and rcode."""
    end = question_end(reply)
    if end < 0:
        end = 12
    qdcount = b"\0\1" if end > 12 else b"\0\0"
    return reply[:2] + bytes((reply[2] | 0x02, reply[3])) + qdcount + b"\0\0\0\0\0\0" + reply[12:end]


# A bucket is a list (cheapest to mutate in place):
TOKENS, REFILLED, LIMITED, RATE, PREFIX, CLASS = range(6)


class ResponseRateLimiter:
    """Decides, per UDP reply, whether it goes out whole, slipped or not at all; counts both.

    Two dicts: `buckets`, the table (prefix, class, class name) -> bucket, bounded by table_size;
    and a front cache (client address, reply bytes 3..75 case-folded) -> the same bucket, so a
    repeated reply costs one lookup and no classifying. Tokens are refilled lazily, when a bucket
    runs dry (the clock is read only then): at most `rate` are added at once, so right after a
    quiet spell up to twice the rate can go out at once, never more."""

    def __init__(self, settings: RateLimitSettings, clock: Callable[[], float] = time.monotonic) -> None:
        rate = float(settings.responses_per_second)
        self.settings = settings
        self.rates = (rate, float(settings.nxdomains_per_second or rate), float(settings.errors_per_second or rate))
        self.slip = settings.slip
        self.table_size = settings.table_size
        self.clock = clock
        self.buckets: dict[tuple, list] = {}
        self.dropped = [0, 0, 0]  # by class
        self.slipped = [0, 0, 0]
        self.limited_prefixes = 0  # episodes started (one rate_limited event each, unless suppressed)
        self._shift4 = 32 - settings.ipv4_prefix_length
        self._shift6 = 128 - settings.ipv6_prefix_length
        self._exempt = [(4 if net.version == 4 else 6, int(net.network_address) >> (net.max_prefixlen - net.prefixlen),
                         net.max_prefixlen - net.prefixlen) for net in settings.exempt]
        self._exempt_bucket = [float("inf"), 0.0, 0, float("inf"), None, NOERROR]  # never runs dry
        self._front: dict[tuple[str, bytes], list] = {}
        self._prefixes: dict[str, object] = {}
        self._episodes: dict[object, float] = {}
        self._log_window = -1.0
        self._log_count = 0
        self._log_suppressed = 0

    # -- the hot path ----------------------------------------------------------------------

    def filter(self, reply: bytes, client_ip: str) -> bytes | None:
        """The bytes to send for `reply` to `client_ip`: reply itself, its slipped form, or None (drop)."""
        key = (client_ip, reply[3:_FRONT_KEY_END])
        bucket = self._front.get(key)
        if bucket is None:
            bucket = self._lookup(reply, client_ip, key)
        tokens = bucket[0] - 1.0
        if tokens >= 0.0:
            bucket[0] = tokens
            return reply
        return self._dry(reply, bucket)

    # -- the rest --------------------------------------------------------------------------

    def _lookup(self, reply: bytes, client_ip: str, key: tuple[str, bytes]) -> list:
        """Front cache miss. The front holds case-folded keys only, so a qname in random 0x20 case
        finds its bucket by its folded form and never fills the front with one-off spellings.
        (lower() also folds other bytes that happen to be letters: that only merges classes.)"""
        folded = key[1].lower()
        if folded != key[1]:
            key = (client_ip, folded)
            bucket = self._front.get(key)
            if bucket is not None:
                return bucket
        return self._classify(reply, client_ip, key)

    def _classify(self, reply: bytes, client_ip: str, front_key: tuple[str, bytes]) -> list:
        """The bucket of this reply's class for this client's prefix (made if new), remembered in front."""
        prefix = self._prefixes.get(client_ip, _MISSING)
        if prefix is _MISSING:
            prefix = self._prefix_of(client_ip)
        if prefix is None:
            bucket = self._exempt_bucket
        else:
            rcode = reply[3] & 0x0F
            if rcode == 0:
                end = question_end(reply)  # the class is qname + qtype, whatever the answer says
                cls, name = NOERROR, reply[12:end if end > 12 else _FRONT_KEY_END].lower()
            elif rcode == 3:
                cls, name = NXDOMAIN, nxdomain_zone(reply)
            else:
                cls, name = ERROR, b""
            key = (prefix, cls, name)
            bucket = self.buckets.get(key)
            if bucket is None:
                now = self.clock()
                if len(self.buckets) >= self.table_size:
                    self._cleanup(now)
                rate = self.rates[cls]
                bucket = self.buckets[key] = [rate, now, 0, rate, prefix, cls]
        front = self._front
        if len(front) >= self.table_size:
            front.clear()
        front[front_key] = bucket
        return bucket

    def _dry(self, reply: bytes, bucket: list) -> bytes | None:
        """No token left: refill by the time since the last refill (at most `rate`), else limit."""
        now = self.clock()
        rate = bucket[RATE]
        tokens = bucket[TOKENS] + (now - bucket[REFILLED]) * rate
        if tokens > rate:
            tokens = rate
        bucket[REFILLED] = now
        if tokens >= 1.0:
            bucket[TOKENS] = tokens - 1.0
            return reply
        bucket[TOKENS] = tokens
        prefix, cls = bucket[PREFIX], bucket[CLASS]
        last = self._episodes.get(prefix)
        if last is None or now - last >= EPISODE_GAP:
            self._episode_started(prefix, cls, now)
        self._episodes[prefix] = now
        bucket[LIMITED] += 1
        if self.slip and bucket[LIMITED] % self.slip == 0:
            self.slipped[cls] += 1
            return slip_reply(reply)
        self.dropped[cls] += 1
        return None

    def _episode_started(self, prefix: object, cls: int, now: float) -> None:
        if len(self._episodes) >= _EPISODES_SIZE:
            self._episodes.clear()
        self.limited_prefixes += 1
        if now - self._log_window >= 1.0:
            self._log_window, self._log_count = now, 0
        if self._log_count >= START_LOGS_PER_SECOND:
            self._log_suppressed += 1
            return
        self._log_count += 1
        suppressed, self._log_suppressed = self._log_suppressed, 0
        log.warning("rate_limited", prefix=self.prefix_text(prefix), response_class=CLASS_NAMES[cls],
                    rate=self.rates[cls], slip=self.slip, suppressed=suppressed)

    def _prefix_of(self, client_ip: str) -> object:
        """The client's prefix key (an int), or None when exempt; remembered per address."""
        try:
            if ":" in client_ip:
                value = int.from_bytes(socket.inet_pton(socket.AF_INET6, client_ip.partition("%")[0]), "big")
                if value >> 32 == 0xFFFF:  # v4-mapped: the v4 address is the client
                    version, value = 4, value & 0xFFFFFFFF
                else:
                    version = 6
            else:
                version, value = 4, int.from_bytes(socket.inet_pton(socket.AF_INET, client_ip), "big")
        except OSError:
            key: object = client_ip  # not an address (cannot happen with real sockets): its own prefix
        else:
            if any(v == version and value >> shift == net for v, net, shift in self._exempt):
                key = None
            elif version == 4:
                key = value >> self._shift4
            else:
                key = (value >> self._shift6) | _V6_TAG
        if len(self._prefixes) >= _PREFIX_MEMO_SIZE:
            self._prefixes.clear()
        self._prefixes[client_ip] = key
        return key

    def prefix_text(self, prefix: object) -> str:
        if not isinstance(prefix, int):
            return str(prefix)
        if prefix >= _V6_TAG:
            bits = 128 - self._shift6
            return str(ipaddress.IPv6Network(((prefix - _V6_TAG) << self._shift6, bits)))
        return str(ipaddress.IPv4Network((prefix << self._shift4, 32 - self._shift4)))

    def _cleanup(self, now: float) -> None:
        """Table full. A limited bucket is refilled (REFILLED set) at every limited reply, so a bucket
        not refilled for a second is not being limited: forgetting it costs at most one fresh burst."""
        buckets = self.buckets
        for key in [key for key, bucket in buckets.items() if now - bucket[REFILLED] >= 1.0]:
            del buckets[key]
        keep = self.table_size // 2
        if len(buckets) > keep:  # a flood of fresh sources: forget the oldest
            for key in list(islice(buckets, len(buckets) - keep)):
                del buckets[key]
        self._front.clear()  # it may point at forgotten buckets
