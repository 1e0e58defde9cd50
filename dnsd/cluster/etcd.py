"""A small asyncio client of etcd's v3 API through its gRPC gateway (HTTP/JSON, served by every etcd
3.4+ member at /v3/): key ranges, puts and deletes in transactions, leases, prefix watches, auth
tokens and TLS. Endpoints are tried in order; every failure to get an answer is EtcdUnavailable.
Why the gateway and not a gRPC client: see ARCHITECTURE.md (Decisions: cluster store)."""
from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import aiohttp
import structlog

from dnsd.common.secretfile import SecretFile
from dnsd.model import EtcdSettings

log = structlog.get_logger(__name__)

API = "/v3"  # etcd 3.4 serves /v3 (and /v3beta); 3.5 and later only /v3


class EtcdUnavailable(Exception):
    """No endpoint answered, or the one that did could not do it (no leader, no quorum, timed out)."""


class EtcdRefused(Exception):
    """etcd answered and refused the request itself (bad auth, a lease not found): retrying elsewhere
    would not help."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: str  # "put" or "delete"
    kv: KeyValue
    previous: KeyValue | None  # the value before (a delete's is what was deleted), when etcd still has it


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def prefix_end(prefix: str) -> str:
    """The range_end covering every key that starts with prefix (etcd's convention: last byte + 1)."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return _b64(b"\0")  # the whole key space
    raw[-1] += 1
    return _b64(bytes(raw))


def _kv(entry: dict) -> KeyValue:
    return KeyValue(base64.b64decode(entry.get("key", "")).decode(errors="replace"),
                    base64.b64decode(entry.get("value", "")), int(entry.get("create_revision", 0)),
                    int(entry.get("mod_revision", 0)), int(entry.get("lease", 0)))


def put_op(key: str, value: bytes, lease: int = 0) -> dict:
    """One put in a transaction (txn success/failure list)."""
    return {"request_put": {"key": _b64(key), "value": _b64(value), **({"lease": str(lease)} if lease else {})}}


def delete_op(key: str) -> dict:
    return {"request_delete_range": {"key": _b64(key), "prev_kv": True}}


def absent(key: str) -> dict:
    """A txn compare: the key does not exist (was never created, or was deleted)."""
    return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


class EtcdClient:
    """One client for one etcd cluster. `endpoints`: client URLs (http://host:port, https://...);
    `timeout`: seconds a request may take before the next endpoint is tried (a member without quorum
    holds a write until its own timeout: ours is shorter, so the caller hears it quickly)."""

    def __init__(self, endpoints: Sequence[str], timeout: float = 2.0, ssl_context: ssl.SSLContext | None = None,
                 username: str | None = None, password: str | None = None):
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.endpoints = [url.rstrip("/") for url in endpoints]
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.username, self.password = username, password
        self._token: str | None = None
        self._preferred = 0  # the endpoint that answered last: tried first next time
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl_context or None))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _order(self) -> list[int]:
        count = len(self.endpoints)
        return [(self._preferred + step) % count for step in range(count)]

    async def _authenticate(self, base: str) -> None:
        if self.username is None or self._token is not None:
            return
        body = await self._post_to(base, "/auth/authenticate", {"name": self.username, "password": self.password or ""},
                                   authenticate=False)
        self._token = body.get("token")

    async def _post_to(self, base: str, path: str, body: dict, authenticate: bool = True) -> dict:
        if authenticate:
            await self._authenticate(base)
        headers = {"Authorization": self._token} if authenticate and self._token else {}
        async with self._http().post(base + API + path, json=body, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
            text = await response.text()
        try:
            answer = json.loads(text) if text else {}
        except ValueError:
            raise EtcdUnavailable(f"{base}: not an etcd answer (HTTP {response.status}): {text[:200]}") from None
        if response.status == 200 and "error" not in answer:
            return answer
        message = answer.get("message") or answer.get("error") or text[:200]
        if "token" in str(message) and authenticate:  # expired or revoked auth token: once more, fresh
            self._token = None
            raise _Retry(str(message))
        if response.status >= 500 or answer.get("code") in (4, 14) or "leader" in str(message) \
                or "timed out" in str(message):
            raise EtcdUnavailable(f"{base}: {message}")
        raise EtcdRefused(f"etcd refused {path}: {message}")

    async def post(self, path: str, body: dict) -> dict:
        """One request to the first endpoint that answers it."""
        problems = []
        for index in self._order():
            base = self.endpoints[index]
            for _ in range(2):
                try:
                    answer = await self._post_to(base, path, body)
                except _Retry:
                    continue
                except EtcdUnavailable as err:
                    problems.append(str(err))
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
                    problems.append(f"{base}: {type(err).__name__}: {err}".rstrip(": "))
                else:
                    self._preferred = index
                    return answer
                break
        raise EtcdUnavailable("; ".join(problems) or "no endpoint answered")

    # -- keys ------------------------------------------------------------------------------------

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under prefix, and the store's revision they were read at (a watch from the next
        revision misses nothing). Linearizable: fails without quorum rather than answer stale."""
        answer = await self.post("/kv/range", {"key": _b64(prefix), "range_end": prefix_end(prefix)})
        return [_kv(entry) for entry in answer.get("kvs", [])], int(answer["header"]["revision"])

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        answer = await self.post("/kv/put", {"key": _b64(key), "value": _b64(value),
                                             **({"lease": str(lease)} if lease else {})})
        return int(answer["header"]["revision"])

    async def delete(self, key: str) -> int:
        """-> how many keys went (0 or 1)."""
        answer = await self.post("/kv/deleterange", {"key": _b64(key)})
        return int(answer.get("deleted", 0))

    async def txn(self, success: list[dict], compare: list[dict] = (), failure: list[dict] = ()) -> bool:
        """All of success at once if every compare holds (else failure): -> whether they held."""
        answer = await self.post("/kv/txn", {"compare": list(compare), "success": success, "failure": list(failure)})
        return bool(answer.get("succeeded", False))

    # -- leases ----------------------------------------------------------------------------------

    async def grant(self, ttl: float) -> int:
        """A new lease of ttl seconds (rounded up, at least 1): its ID."""
        answer = await self.post("/lease/grant", {"TTL": str(max(1, int(-(-ttl // 1))))})
        return int(answer["ID"])

    async def keep_alive(self, lease: int) -> int:
        """Renew a lease once: its TTL again. EtcdRefused when it has already expired."""
        answer = await self.post("/lease/keepalive", {"ID": str(lease)})
        ttl = int(answer.get("result", answer).get("TTL", 0))
        if ttl <= 0:
            raise EtcdRefused(f"lease {lease:x} expired")
        return ttl

    async def revoke(self, lease: int) -> None:
        """End a lease now: its keys go with it."""
        try:
            await self.post("/lease/revoke", {"ID": str(lease)})
        except EtcdRefused:
            pass  # already gone

    async def status(self) -> dict:
        """The answering member's status (version, leader ID: 0 while it has none)."""
        return await self.post("/maintenance/status", {})

    # -- watching --------------------------------------------------------------------------------

    async def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        """The changes under prefix from start_revision on, one list per etcd revision batch, until
        the stream breaks (EtcdUnavailable: the caller reads again and watches anew). Compacted past
        start_revision: EtcdUnavailable too (a full read converges)."""
        request = {"create_request": {"key": _b64(prefix), "range_end": prefix_end(prefix),
                                      "start_revision": str(start_revision), "prev_kv": True}}
        problems = []
        for index in self._order():
            base = self.endpoints[index]
            try:
                await self._authenticate(base)
                headers = {"Authorization": self._token} if self._token else {}
                timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout)
                async with self._http().post(base + API + "/watch", json=request, headers=headers,
                                             timeout=timeout) as response:
                    if response.status != 200:
                        raise EtcdUnavailable(f"{base}: watch: HTTP {response.status}")
                    self._preferred = index
                    async for message in _json_stream(response.content):
                        result = message.get("result")
                        if result is None:
                            raise EtcdUnavailable(f"{base}: watch: {message.get('error', message)}")
                        if int(result.get("compact_revision", 0)):
                            raise EtcdUnavailable(f"{base}: watch: revision {start_revision} compacted")
                        if result.get("canceled"):
                            raise EtcdUnavailable(f"{base}: watch canceled: {result.get('cancel_reason', '')}")
                        events = [WatchEvent("delete" if event.get("type") == "DELETE" else "put",
                                             _kv(event["kv"]), _kv(event["prev_kv"]) if event.get("prev_kv") else None)
                                  for event in result.get("events", [])]
                        if events or result.get("created"):
                            yield events  # the first, empty, says the watch is in place
                raise EtcdUnavailable(f"{base}: watch stream ended")
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, EtcdRefused) as err:
                problems.append(f"{base}: {type(err).__name__}: {err}")
        raise EtcdUnavailable("; ".join(problems) or "no endpoint answered")


class _Retry(Exception):
    """The auth token went stale: authenticate and send again."""


async def _json_stream(content: aiohttp.StreamReader) -> AsyncIterator[dict]:
    """The JSON objects of a streamed answer, as they arrive (the gateway writes one after another)."""
    decoder = json.JSONDecoder()
    buffer = ""
    async for chunk in content.iter_any():
        buffer += chunk.decode()
        while True:
            buffer = buffer.lstrip()
            if not buffer:
                break
            try:
                message, end = decoder.raw_decode(buffer)
            except ValueError:
                break  # incomplete: wait for more
            buffer = buffer[end:]
            if isinstance(message, dict):
                yield message


def client_ssl_context(ca_file: str | None, cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    """TLS towards etcd: its CA (None: the system's), and our client certificate when etcd asks one."""
    context = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


def client_for(settings: EtcdSettings) -> EtcdClient:
    """The client the cluster section describes (reads the password file now: SecretUnreadable)."""
    tls = settings.tls
    context = client_ssl_context(tls.ca_file, tls.cert_file, tls.key_file) if tls is not None else None
    password = SecretFile(settings.password_file, "etcd password file").value() if settings.password_file else None
    return EtcdClient(settings.endpoints, settings.timeout, context, settings.username, password)
