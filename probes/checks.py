"""Deep-health checks of one replica (OCI, distribution, Harbor, HTTP, TCP): each returns a ProbeResult, never raises.

`run_check(check, session, timeout)` runs one `ProbeCheck` against one replica and turns every outcome
(a good answer, a bad status, a refused or reset connection, a TLS failure, a timeout, a garbage or
huge body, JSON of the wrong shape) into a `ProbeResult` whose `reason` says what was seen. Only
`asyncio.CancelledError` propagates.

Rules shared by every HTTP kind:
  - no redirect is followed: a 3xx is judged by the expected statuses like any other status;
  - at most 64 KiB of any body is read; a JSON body longer than that is "too big", a substring is
    looked for in the first 64 KiB only;
  - `host_header` is sent as Host and used as the TLS server name (SNI and certificate check), so a
    probe can dial an IP address while validating the registry's certificate name;
  - every configured header is sent on every request of the check (OCI canaries included), so e.g.
    `Authorization: Basic ...` works for registries that require auth;
  - an oci check whose registry has credentials in `probes.registry_credentials` answers 401s with
    them (Basic, or the token flow: probes/registryauth.py); a 401 it cannot get past fails the check.
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp
from yarl import URL

from dnsd.model import ProbeCheck, StatusRange
from probes.registryauth import AuthError, RegistryAuth

MAX_BODY = 64 * 1024
MAX_REASON = 200

OCI_MANIFEST_ACCEPT = ", ".join((
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
))


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    reason: str  # short, human, specific; see the module docstring
    latency: float  # seconds the check took
    status_code: int | None = None


class _Fail(Exception):
    """Internal: a check step failed; carries the reason (and status) for the ProbeResult."""

    def __init__(self, reason: str, status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status


def make_session(limit: int = 64) -> aiohttp.ClientSession:
    """One session shared by every check: at most `limit` connections at once, no cookies kept, no
    proxy from the environment, no session-level timeout (run_check bounds each check itself).
    Connections are not kept alive: every check dials anew, so a listener that stopped accepting
    is seen at once instead of being hidden by a pooled connection."""
    connector = aiohttp.TCPConnector(limit=limit, force_close=True)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                 timeout=aiohttp.ClientTimeout(total=None), trust_env=False,
                                 raise_for_status=False)


async def run_check(check: ProbeCheck, session: aiohttp.ClientSession, timeout: float,
                    auth: RegistryAuth | None = None) -> ProbeResult:
    """Run one check within `timeout` seconds. Never raises, except asyncio.CancelledError.
    `auth`: registry credentials; an oci check whose registry has some answers 401s with them."""
    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            ok, reason, status = await _dispatch(check, session, auth)
    except TimeoutError:
        ok, reason, status = False, f"timeout after {timeout:g}s", None
    except asyncio.CancelledError:
        raise
    except _Fail as fail:
        ok, reason, status = False, fail.reason, fail.status
    except Exception as err:  # anything else: a failed check, never a crashed prober
        ok, reason, status = False, _describe_error(err, check), None
    return ProbeResult(ok=ok, reason=_clip(reason), latency=time.monotonic() - start, status_code=status)


async def _dispatch(check: ProbeCheck, session: aiohttp.ClientSession,
                    auth: RegistryAuth | None = None) -> tuple[bool, str, int | None]:
    if check.kind == "tcp":
        return await _tcp(check)
    client = _Client(check, session, auth if check.kind == "oci" else None)
    if check.kind in ("http", "https"):
        return await _http(check, client)
    if check.kind == "oci":
        return await _oci(check, client)
    if check.kind == "distribution":
        return await _distribution(check, client)
    if check.kind == "harbor":
        return await _harbor(check, client)
    return False, f"unknown check kind {check.kind!r}", None


# -- HTTP plumbing ---------------------------------------------------------------------------------

@dataclass(slots=True)
class _Response:
    status: int
    headers: Mapping[str, str]
    body: bytes  # at most MAX_BODY bytes
    truncated: bool  # the body went on past MAX_BODY
    url: str

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> object:
        """The body as JSON, or _Fail with why not."""
        if self.truncated:
            raise _Fail(f"body too big to parse (over {MAX_BODY // 1024} KiB) from {self.url}", self.status)
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise _Fail(f"body is not JSON ({_snippet(self.body)}) from {self.url}", self.status) from None


class _Client:
    """Requests to one replica: base URL, Host header, TLS settings and extra headers of the check."""

    def __init__(self, check: ProbeCheck, session: aiohttp.ClientSession, auth: RegistryAuth | None = None):
        self.check = check
        self.session = session
        scheme = "https" if check.kind == "https" else ("http" if check.kind == "http" else check.scheme or "http")
        host = f"[{check.address}]" if ":" in check.address else check.address
        self.scheme = scheme
        self.base = f"{scheme}://{host}:{check.port}"
        self.ssl: ssl.SSLContext | bool = _ssl_context(check) if scheme == "https" else True
        self.server_hostname = (urlsplit("//" + check.host_header).hostname
                                if scheme == "https" and check.host_header else None)
        self.auth = auth.for_check(check, self.base, self.ssl) if auth is not None else None

    def url(self, path: str) -> str:
        return self.base + (path if path.startswith("/") else "/" + path)

    async def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                      data: bytes | None = None, read_body: bool = True) -> _Response:
        """With registry credentials: a 401 is answered (registryauth) and the request sent once more;
        a 401 after that is a failed check, never "alive"."""
        if self.auth is None:
            return await self._send(method, url, headers, data, read_body)
        authorization = self.auth.header()
        resp = await self._send(method, url, {**(headers or {}), "Authorization": authorization}
                                if authorization else headers, data, read_body)
        if resp.status != 401:
            return resp
        try:
            authorization = await self.auth.answer(resp.headers.get("WWW-Authenticate", ""), self.session,
                                                   authorization)
        except AuthError as err:
            raise _Fail(f"authentication failed for {url}: {err}", 401) from None
        resp = await self._send(method, url, {**(headers or {}), "Authorization": authorization}, data, read_body)
        if resp.status == 401:
            raise _Fail(f"authentication failed: HTTP 401 from {url} for {self.auth.who}", 401)
        return resp

    async def _send(self, method: str, url: str, headers: Mapping[str, str] | None, data: bytes | None,
                    read_body: bool) -> _Response:
        all_headers: dict[str, str] = dict(self.check.headers)
        if self.check.host_header:
            all_headers["Host"] = self.check.host_header
        if headers:
            all_headers.update(headers)
        target = URL(url, encoded=True)
        async with self.session.request(method, target, headers=all_headers, data=data, allow_redirects=False,
                                        ssl=self.ssl, server_hostname=self.server_hostname,
                                        proxy=None) as resp:
            body, truncated = b"", False
            if read_body and method != "HEAD":
                body, truncated = await _read_capped(resp)
            if truncated:
                resp.close()  # do not drain (or keep) a connection still sending a huge body
            return _Response(resp.status, resp.headers, body, truncated, url)


async def _read_capped(resp: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    total = 0
    while total <= MAX_BODY:  # each read returns >= 1 byte or EOF: at most MAX_BODY + 1 rounds
        chunk = await resp.content.read(MAX_BODY + 1 - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    body = b"".join(chunks)
    return body[:MAX_BODY], total > MAX_BODY


_ssl_cache: dict[tuple, ssl.SSLContext] = {}


def _ssl_context(check: ProbeCheck) -> ssl.SSLContext | bool:
    """False (no verification) when tls_verify is off; else a default context with the system CAs,
    plus `ca_file` when set. Contexts are cached per CA file version (path, mtime, size)."""
    if not check.tls_verify:
        return False
    key: tuple = ("system",)
    if check.ca_file:
        try:
            st = os.stat(check.ca_file)
        except OSError as err:
            raise _Fail(f"cannot read ca_file {check.ca_file}: {err.strerror or err}") from None
        key = (check.ca_file, st.st_mtime_ns, st.st_size)
    context = _ssl_cache.get(key)
    if context is None:
        try:
            context = ssl.create_default_context()
            if check.ca_file:
                context.load_verify_locations(cafile=check.ca_file)
        except (OSError, ssl.SSLError) as err:
            raise _Fail(f"cannot load ca_file {check.ca_file}: {err}") from None
        if len(_ssl_cache) > 64:
            _ssl_cache.clear()
        _ssl_cache[key] = context
    return context


def _status_ok(status: int, ranges: tuple[StatusRange, ...]) -> bool:
    return any(r.low <= status <= r.high for r in ranges)


def _bad_status(resp: _Response) -> _Fail:
    return _Fail(f"HTTP {resp.status} from {resp.url}", resp.status)


# -- kinds ---------------------------------------------------------------------------------------

async def _http(check: ProbeCheck, client: _Client) -> tuple[bool, str, int | None]:
    resp = await client.request(check.method, client.url(check.path))
    if not _status_ok(resp.status, check.expect_status):
        raise _bad_status(resp)
    if check.body_contains is not None and check.body_contains not in resp.text():
        where = f" (first {MAX_BODY // 1024} KiB)" if resp.truncated else ""
        raise _Fail(f"body lacks {check.body_contains!r}{where}", resp.status)
    if check.json_path is not None:
        value = _json_lookup(resp.json(), check.json_path, resp.status)
        if check.json_equals is not None and value != check.json_equals:
            raise _Fail(f"json {check.json_path!r} is {_clip(value, 60)!r}, expected {check.json_equals!r}",
                        resp.status)
        return True, f"HTTP {resp.status}, json {check.json_path!r} = {_clip(value, 60)!r}", resp.status
    return True, f"HTTP {resp.status}", resp.status


def _json_lookup(doc: object, path: str, status: int) -> str:
    """The value at dotted `path` rendered as text (strings as-is, others as JSON: true, 3, null)."""
    node = doc
    for segment in path.split("."):
        if isinstance(node, dict) and segment in node:
            node = node[segment]
        elif isinstance(node, list) and _is_index(segment) and -len(node) <= int(segment) < len(node):
            node = node[int(segment)]
        else:
            raise _Fail(f"json path {path!r} not found (no {segment!r})", status)
    if isinstance(node, str):
        return node
    return json.dumps(node, separators=(",", ":"), sort_keys=True)


def _is_index(text: str) -> bool:
    return text.lstrip("-").isdigit()


async def _oci(check: ProbeCheck, client: _Client) -> tuple[bool, str, int | None]:
    resp = await client.request("GET", client.url(check.path))
    if not _status_ok(resp.status, check.expect_status):  # as configured (dnsd.model owns the default)
        raise _bad_status(resp)
    if resp.status == 200 and resp.body.strip():
        resp.json()  # a 200 /v2/ answers JSON ("{}"); an HTML page or garbage is not the registry API
    reason = f"HTTP {resp.status} (auth required: alive)" if resp.status == 401 else f"HTTP {resp.status}"
    extras = []
    if check.canary_manifest:
        repo, ref = _split_reference(check.canary_manifest, "canary_manifest")
        canary = await _step(client, f"canary manifest {check.canary_manifest}: HEAD",
                             client.request("HEAD", client.url(f"/v2/{repo}/manifests/{ref}"),
                                            headers={"Accept": OCI_MANIFEST_ACCEPT}))
        if canary.status != 200:
            raise _Fail(f"canary manifest {check.canary_manifest}: HEAD returned {canary.status}", canary.status)
        extras.append("manifest")
    if check.canary_blob:
        repo, sep, digest = check.canary_blob.partition("@")
        if not sep or not repo or not digest:
            raise _Fail(f"bad canary_blob {check.canary_blob!r}: expected REPOSITORY@sha256:HEX")
        canary = await _step(client, f"canary blob {check.canary_blob}: HEAD",
                             client.request("HEAD", client.url(f"/v2/{repo}/blobs/{digest}")))
        if canary.status != 200:
            raise _Fail(f"canary blob {check.canary_blob}: HEAD returned {canary.status}", canary.status)
        extras.append("blob")
    if check.write_canary:
        await _write_canary(check.write_canary, client)
        extras.append("write")
    if extras:
        reason += ", canary " + "+".join(extras) + " ok"
    return True, reason, resp.status


def _split_reference(text: str, what: str) -> tuple[str, str]:
    """'repo:tag' or 'repo@sha256:...' -> (repo, tag or digest)."""
    if "@" in text:
        repo, _, ref = text.partition("@")
    else:
        repo, _, ref = text.rpartition(":")
    if not repo or not ref or "/" in ref:
        raise _Fail(f"bad {what} {text!r}: expected REPOSITORY:TAG")
    return repo, ref


# The write canary's blob: the same bytes every round, so a replica's storage holds one canary blob
# however long probes runs (a new blob per round left one orphan per round until garbage collection,
# since a blob DELETE only unlinks it: ~43,000 a day per replica at a 2 s interval).
CANARY_CONTENT = b"geotm write canary: this blob is uploaded again by every probe round\n"
CANARY_DIGEST = "sha256:" + hashlib.sha256(CANARY_CONTENT).hexdigest()


async def _write_canary(repo: str, client: _Client) -> None:
    """Start a blob upload, send the canary bytes as a chunk, commit them under their digest, unlink
    the blob. The registry already holds that blob after the first round, so the round must not let
    it answer from what it has: the POST carries no digest and no mount (no shortcut), the bytes go in
    a PATCH before the registry learns their digest, so it has to take them into the new upload
    session (CNCF distribution writes _uploads/<id>/ at POST and PATCH), and the PUT commits and
    checks them. A full or read-only disk fails the POST or the commit while /debug/health stays green."""
    start = await _step(client, "write canary: POST",
                        client.request("POST", client.url(f"/v2/{repo}/blobs/uploads/"), data=b""))
    location = start.headers.get("Location")
    if start.status != 202 or not location:
        what = f"returned {start.status}" if start.status != 202 else "returned 202 without Location"
        raise _Fail(f"write canary: POST {what}", start.status)
    upload_url = _rebase(client, urljoin(start.url, location))
    size = len(CANARY_CONTENT)
    try:
        patch = await _step(client, "write canary: PATCH",
                            client.request("PATCH", upload_url, data=CANARY_CONTENT,
                                           headers={"Content-Type": "application/octet-stream",
                                                    "Content-Range": f"0-{size - 1}"}))
        if patch.status != 202:
            raise _Fail(f"write canary: PATCH returned {patch.status}", patch.status)
        received = patch.headers.get("Range")
        if received is not None and received.removeprefix("bytes=") != f"0-{size - 1}":
            raise _Fail(f"write canary: PATCH took Range {received!r} of {size} bytes", patch.status)
        if patch.headers.get("Location"):  # the session's next URL (distribution signs its state into it)
            upload_url = _rebase(client, urljoin(patch.url, patch.headers["Location"]))
        put_url = upload_url + ("&" if "?" in upload_url else "?") + "digest=" + CANARY_DIGEST
        put = await _step(client, "write canary: PUT",
                          client.request("PUT", put_url, data=b"",
                                         headers={"Content-Type": "application/octet-stream"}))
        if put.status != 201:
            raise _Fail(f"write canary: PUT returned {put.status}", put.status)
    except _Fail:
        await _cancel_upload(client, upload_url)
        raise
    delete = await _step(client, "write canary: DELETE",
                         client.request("DELETE", client.url(f"/v2/{repo}/blobs/{CANARY_DIGEST}")))
    if delete.status not in (200, 202, 204, 405):  # 405: deletes disabled; the write itself worked
        raise _Fail(f"write canary: DELETE returned {delete.status}", delete.status)


async def _step(client: _Client, label: str, request: Awaitable[_Response]) -> _Response:
    """A request of a multi-step check: a transport failure is reported with the step's label."""
    try:
        return await request
    except (aiohttp.ClientError, OSError) as err:
        raise _Fail(f"{label} failed: {_describe_error(err, client.check)}") from None


def _rebase(client: _Client, url: str) -> str:
    """Keep dialing the probed replica: an absolute Location's path and query on our base URL."""
    parts = urlsplit(url)
    return client.base + (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


async def _cancel_upload(client: _Client, upload_url: str) -> None:
    """Best effort: abandon the upload so the registry can drop it at once."""
    try:
        async with asyncio.timeout(1.0):
            await client.request("DELETE", upload_url, read_body=False)
    except (aiohttp.ClientError, OSError, TimeoutError, _Fail):
        pass


async def _distribution(check: ProbeCheck, client: _Client) -> tuple[bool, str, int | None]:
    resp = await client.request("GET", client.url(check.path))
    if _status_ok(resp.status, check.expect_status):
        doc = resp.json()
        if not isinstance(doc, dict):
            raise _Fail(f"health body is JSON but not an object ({_snippet(resp.body)})", resp.status)
        return True, f"HTTP {resp.status}", resp.status
    if resp.status == 503 and not resp.truncated:
        try:
            doc = json.loads(resp.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            doc = None
        if isinstance(doc, dict) and doc:
            pairs = "; ".join(f"{name}: {_as_text(doc[name])}" for name in sorted(doc))
            raise _Fail(pairs, resp.status)
    raise _bad_status(resp)


async def _harbor(check: ProbeCheck, client: _Client) -> tuple[bool, str, int | None]:
    resp = await client.request("GET", client.url(check.path))
    try:
        doc = resp.json()
    except _Fail:
        if not _status_ok(resp.status, check.expect_status):
            raise _bad_status(resp) from None
        raise
    components = doc.get("components") if isinstance(doc, dict) else None
    if not isinstance(components, list) or not all(isinstance(c, dict) for c in components):
        if not _status_ok(resp.status, check.expect_status):
            raise _bad_status(resp)
        raise _Fail("harbor health lacks a 'components' list", resp.status)
    reported = {str(c.get("name")): c for c in components}
    wanted = check.components or tuple(reported)
    for name in wanted:
        component = reported.get(name)
        if component is None:
            raise _Fail(f"harbor component {name!r} not reported", resp.status)
        if component.get("status") != "healthy":
            error = component.get("error")
            detail = f": {_as_text(error)}" if error else f" (status {_as_text(component.get('status'))!r})"
            raise _Fail(f"harbor component {name!r} unhealthy{detail}", resp.status)
    if not check.components and doc.get("status") not in (None, "healthy"):
        raise _Fail(f"harbor status {_as_text(doc.get('status'))!r}", resp.status)
    if not _status_ok(resp.status, check.expect_status):
        raise _bad_status(resp)
    return True, f"HTTP {resp.status}, {len(wanted)} component{'' if len(wanted) == 1 else 's'} healthy", resp.status


async def _tcp(check: ProbeCheck) -> tuple[bool, str, int | None]:
    try:
        _reader, writer = await asyncio.open_connection(check.address, check.port)
    except OSError as err:
        raise _Fail(_describe_os_error(err, check)) from None
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True, "connected", None


# -- reasons -------------------------------------------------------------------------------------

def _endpoint(check: ProbeCheck) -> str:
    host = f"[{check.address}]" if ":" in check.address else check.address
    return f"{host}:{check.port}"


def _describe_os_error(err: BaseException, check: ProbeCheck) -> str:
    where = _endpoint(check)
    if isinstance(err, socket.gaierror):
        return f"DNS lookup failed for {check.address}: {err.strerror or err}"
    if isinstance(err, ConnectionRefusedError) or getattr(err, "errno", None) == errno.ECONNREFUSED:
        return f"connection refused ({where})"
    if isinstance(err, ConnectionResetError):
        return f"connection reset ({where})"
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror.lower()} ({where})"
    return f"{type(err).__name__}: {err} ({where})"


def _describe_error(err: BaseException, check: ProbeCheck) -> str:
    where = _endpoint(check)
    if isinstance(err, aiohttp.ClientConnectorCertificateError):
        cert_err = err.certificate_error
        message = getattr(cert_err, "verify_message", None) or getattr(cert_err, "reason", None) or str(cert_err)
        return f"TLS certificate verify failed ({where}): {message}"
    if isinstance(err, (aiohttp.ClientConnectorSSLError, aiohttp.ClientSSLError)):
        os_err = getattr(err, "os_error", None)
        message = getattr(os_err, "reason", None) or getattr(os_err, "strerror", None) or str(os_err or err)
        return f"TLS error ({where}): {message}"
    if isinstance(err, ssl.SSLError):
        return f"TLS error ({where}): {err.reason or err}"
    if isinstance(err, aiohttp.ClientConnectorDNSError):
        return f"DNS lookup failed for {check.address}: {err.os_error.strerror or err.os_error}"
    if isinstance(err, aiohttp.ClientConnectorError):
        return _describe_os_error(err.os_error, check)
    if isinstance(err, aiohttp.ServerDisconnectedError):
        return f"server disconnected without a response ({where})"
    if isinstance(err, aiohttp.ClientResponseError):
        return f"bad HTTP response ({where}): {err.message}"
    if isinstance(err, aiohttp.ClientPayloadError):
        return f"broken response body ({where}): {err}"
    if isinstance(err, aiohttp.ClientOSError) or isinstance(err, OSError):
        return _describe_os_error(err, check)
    if isinstance(err, aiohttp.ClientError):
        return f"{type(err).__name__} ({where}): {err}"
    return f"check failed ({where}): {type(err).__name__}: {err}"


def _as_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), sort_keys=True)


def _snippet(body: bytes) -> str:
    """A short, printable description of a body: its start if it is text, else its size."""
    if not body:
        return "empty"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return f"{len(body)} bytes, not text"
    if not all(c.isprintable() or c.isspace() for c in text[:200]):
        return f"{len(body)} bytes, not text"
    return repr(" ".join(text[:40].split())) + ("..." if len(text) > 40 else "")


def _clip(text: str, limit: int = MAX_REASON) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
