"""What the forwarding tests share: queries as dnsd parses them, replies built with dnspython (an
independent implementation), a fake clock, our zone's predicate, and FakeUpstream, a hostile upstream
resolver on loopback (asyncio UDP and TCP on one port) whose behaviour each test scripts, and
UpstreamThread, the same in a thread of its own for tests that drive a real dnsd process."""
from __future__ import annotations

import asyncio
import dataclasses
import struct
import threading
from collections.abc import Awaitable, Callable

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from dnsd.forward.message import Cleaned, clean_reply, upstream_query
from dnsd.model import ForwardCache, ForwardSettings
from dnsd.protocol import wire
from tests.harness import free_port

ZONE = dns.name.from_text("azurecr.test.")
CLIENT = "127.0.0.1"


def in_zone(key: bytes) -> bool:
    """Our zone is azurecr.test (as CompiledZone.in_zone: a lower-cased wire name at or below it)."""
    zone = ZONE.to_wire()
    pos = 0
    while pos < len(key):
        if key[pos:] == zone:
            return True
        pos += key[pos] + 1
    return False


class Clock:
    """A clock the test moves by hand: no sleeps."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def query(name: str = "www.example.com.", rdtype: str = "A", *, qid: int = 0x4242, edns: bool = True,
          dnssec_ok: bool = False, cd: bool = False, rd: bool = True, payload: int = 1232,
          ecs: str | None = None) -> wire.Query:
    """A client query as dnsd's parser sees it."""
    options = [dns.edns.ECSOption(ecs, 24)] if ecs else []
    if edns:
        msg = dns.message.make_query(name, rdtype, use_edns=0, want_dnssec=dnssec_ok, payload=payload,
                                     options=options)
    else:
        msg = dns.message.make_query(name, rdtype, use_edns=False)
    msg.id = qid
    if not rd:
        msg.flags &= ~dns.flags.RD
    if cd:
        msg.flags |= dns.flags.CD
    return wire.parse_query(msg.to_wire())


def reply_to(data: bytes, *records: str, authority: tuple[str, ...] = (), additional: tuple[str, ...] = (),
             rcode: int = dns.rcode.NOERROR, tc: bool = False, qid: int | None = None,
             question: tuple[str, str] | None = None) -> bytes:
    """A reply to the query in `data`, records as zone-file lines ('name ttl IN type rdata').
    `qid` and `question` forge a reply that does not match."""
    request = dns.message.from_wire(data)
    if question is not None:
        request = dns.message.make_query(*question)
        request.id = dns.message.from_wire(data).id
    response = dns.message.make_response(request)
    response.set_rcode(rcode)
    for section, lines in ((response.answer, records), (response.authority, authority),
                           (response.additional, additional)):
        for line in lines:
            name, ttl, rdclass, rdtype, *rdata = line.split()
            section.append(dns.rrset.from_text(name, int(ttl), rdclass, rdtype, " ".join(rdata)))
    if tc:
        response.flags |= dns.flags.TC
        response.answer.clear()
    if qid is not None:
        response.id = qid
    return response.to_wire(max_size=65535)  # the test decides what is too big, not the request


def decode(reply: bytes) -> dns.message.Message:
    return dns.message.from_wire(reply)


_CACHE_KEYS = frozenset(field.name for field in dataclasses.fields(ForwardCache))


def settings(*ports: int, **overrides) -> ForwardSettings:
    """The forward section with these upstream ports on 127.0.0.1, short timeouts, and any other value
    given by its name (those of forward.cache too: max_entries=2, serve_stale=60)."""
    cache = {key: overrides.pop(key) for key in list(overrides) if key in _CACHE_KEYS}
    values = {"upstreams": tuple(("127.0.0.1", port) for port in ports), "try_timeout": 0.3,
              "deadline": 2.0, "cache": ForwardCache(**cache)}
    values.update(overrides)
    return ForwardSettings(**values)


# handler(query bytes, over_tcp) -> the datagrams to send back, each (bytes, how); how is "same"
# (from the port asked) or "other" (from another port of the same address). [] or None: stay silent.
Handler = Callable[[bytes, bool], Awaitable[list[tuple[bytes, str]] | None]]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, upstream: FakeUpstream) -> None:
        self.upstream = upstream

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.upstream.spawn(self.upstream.answer_udp(self.transport, data, addr))


class FakeUpstream:
    """An upstream resolver whose answers a test scripts. Counts the queries it received (UDP and TCP)
    and remembers them. Use as `async with FakeUpstream(handler) as up: ... up.port ...`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.port = free_port()
        self.received: list[tuple[bytes, bool]] = []  # (query, over_tcp)
        self._tasks: set[asyncio.Task] = set()

    @property
    def udp_queries(self) -> int:
        return sum(1 for _, tcp in self.received if not tcp)

    @property
    def tcp_queries(self) -> int:
        return sum(1 for _, tcp in self.received if tcp)

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def __aenter__(self) -> FakeUpstream:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=("127.0.0.1", self.port))
        self._other, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                             local_addr=("127.0.0.1", 0))
        self._tcp = await asyncio.start_server(self._serve_tcp, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc) -> None:
        self._udp.close()
        self._other.close()
        self._tcp.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._tcp.wait_closed()

    async def answer_udp(self, transport, data: bytes, addr) -> None:
        self.received.append((data, False))
        for reply, how in await self.handler(data, False) or ():
            (transport if how == "same" else self._other).sendto(reply, addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                data = await reader.readexactly(size)
                self.received.append((data, True))
                for reply, _ in await self.handler(data, True) or ():
                    writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class UpstreamThread:
    """A FakeUpstream on an event loop of its own, in a thread: the upstream of a real dnsd process in a
    test that blocks (subprocesses, blocking DNS queries). `handler` may be replaced while it runs;
    `received` is the FakeUpstream's. Use as `with UpstreamThread(handler) as up: ... up.port ...`;
    stop() ends it early (the upstream goes away: nothing listens on its port any more)."""

    def __init__(self, handler: Handler) -> None:
        self.upstream = FakeUpstream(self._dispatch)
        self.handler = handler
        self.port = self.upstream.port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-upstream", daemon=True)

    @property
    def received(self) -> list[tuple[bytes, bool]]:
        return self.upstream.received

    def questions(self) -> list[str]:
        """The names asked so far, lower case with the trailing dot, in order (UDP and TCP)."""
        return [dns.message.from_wire(data).question[0].name.to_text().lower() for data, _ in self.received]

    async def _dispatch(self, data: bytes, over_tcp: bool):
        return await self.handler(data, over_tcp)

    def __enter__(self) -> UpstreamThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.upstream.__aenter__(), self._loop).result(5)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.upstream.__aexit__(None, None, None), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()

    def __exit__(self, *exc) -> None:
        self.stop()


def answering(*records: str, delay: float = 0.0, **reply_options) -> Handler:
    """A handler that answers every query with these records (after `delay` seconds)."""

    async def handler(data: bytes, over_tcp: bool):
        if delay:
            await asyncio.sleep(delay)
        return [(reply_to(data, *records, **reply_options), "same")]

    return handler


async def silent(data: bytes, over_tcp: bool):
    return None


def rdtype_of(name: str) -> int:
    return dns.rdatatype.from_text(name)


def cleaned(*records: str, qname: str = "www.example.com.", rdtype: str = "A", **reply_options) -> Cleaned:
    """An upstream reply with these records, walked and cleaned as the forwarder does."""
    asked = query(qname, rdtype)
    return clean_reply(reply_to(upstream_query(1, asked, 1232), *records, **reply_options), asked.qtype, in_zone)


def unbound_config(base, port: int, *server_lines: str, stubs: tuple[tuple[str, int], ...] = ()) -> str:
    """An unbound.conf for tests: in the foreground, on 127.0.0.1:PORT, one thread, no validation
    (module-config is one of `server_lines`), no remote control; each (zone, port) in `stubs` a
    stub-zone to 127.0.0.1 on that port."""
    server = [
        "interface: 127.0.0.1", f"port: {port}", "do-daemonize: no", 'username: ""', 'chroot: ""',
        f'directory: "{base}"', 'pidfile: ""', "use-syslog: no", 'logfile: ""', "verbosity: 0", "do-ip6: no",
        "num-threads: 1", "so-reuseport: no", "access-control: 127.0.0.0/8 allow", "do-not-query-localhost: no",
        *server_lines]
    text = "server:\n" + "".join(f"    {line}\n" for line in server)
    text += "remote-control:\n    control-enable: no\n"
    for zone, stub_port in stubs:
        text += f'stub-zone:\n    name: "{zone}"\n    stub-addr: 127.0.0.1@{stub_port}\n'
    return text


def knot_config(base, port: int, zones: tuple[str, ...], signed: tuple[str, ...] = ()) -> str:
    """A knotd.conf for tests: on 127.0.0.1:PORT, one worker of each kind, state under `base`, each zone
    from `base`/ZONE.zone; the zones in `signed` signed by Knot (ECDSA P-256, NSEC, keys in base/keys)."""
    text = (f"server:\n    listen: 127.0.0.1@{port}\n    rundir: {base}/run\n    udp-workers: 1\n"
            "    tcp-workers: 1\n    background-workers: 1\n"
            "log:\n  - target: stderr\n    any: warning\n"
            f"database:\n    storage: {base}/db\n")
    if signed:
        text += (f"keystore:\n  - id: pem\n    backend: pem\n    config: {base}/keys\n"
                 "policy:\n  - id: fast\n    algorithm: ecdsap256sha256\n    keystore: pem\n    nsec3: off\n")
    text += (f"template:\n  - id: default\n    storage: {base}\n    journal-content: none\n"
             "    zonefile-sync: -1\nzone:\n")
    for zone in zones:
        text += f"  - domain: {zone}\n    file: {base}/{zone}.zone\n"
        if zone in signed:
            text += "    dnssec-signing: on\n    dnssec-policy: fast\n"
    return text
