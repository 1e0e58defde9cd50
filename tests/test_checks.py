"""probes.checks against real in-process servers on loopback: one table of cases per kind, each asserting ok and a reason substring.

Servers are aiohttp apps on an AppRunner (port 0) or raw asyncio servers; nothing of aiohttp is mocked.
TLS cases use a throwaway CA and leaf certificate made with the openssl command line.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from dnsd.common.children import free_port
from dnsd.model import ProbeCheck, StatusRange
from probes.checks import CANARY_CONTENT, CANARY_DIGEST, MAX_BODY, ProbeResult, make_session, run_check
from tests import harness
from tests.tools import require_tool

HOST = "127.0.0.1"
KNOWN_BLOB = "sha256:" + hashlib.sha256(b"canary blob").hexdigest()
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


# -- servers -------------------------------------------------------------------------------------

@dataclass
class Server:
    """An app (or raw handler) under test, and what it saw."""

    app: web.Application | None = None
    raw: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any] | None = None
    seen: list[tuple[str, str]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@contextlib.asynccontextmanager
async def serving(server: Server, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """Run `server` on 127.0.0.1, a free port; yields the port."""
    if server.raw is not None:
        raw = await asyncio.start_server(server.raw, HOST, 0)
        try:
            yield raw.sockets[0].getsockname()[1]
        finally:
            server.release.set()
            raw.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(raw.wait_closed(), 1)
        return
    runner = web.AppRunner(server.app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, HOST, 0, ssl_context=ssl_context).start()
    try:
        yield runner.addresses[0][1]
    finally:
        server.release.set()
        await runner.cleanup()


def web_server() -> Server:
    """Generic HTTP behaviours, one per path."""
    server = Server()

    async def ok(_r):
        return web.Response(text="all ok here")

    async def status(r):
        return web.Response(status=int(r.match_info["code"]), text="status page")

    async def redirect(_r):
        return web.Response(status=302, headers={"Location": "/ok"})

    async def doc(_r):
        return web.json_response({"status": "up", "ready": True, "count": 3, "none": None,
                                  "items": [{"name": "db", "state": "green"}, {"name": "cache", "state": "red"}]})

    async def slow(_r):
        server.seen.append(("GET", "/slow"))  # in flight
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.release.wait(), 5)
        return web.Response(text="late")

    async def garbage(_r):
        return web.Response(body=b"\x00\xff" + os.urandom(300), content_type="application/json")

    async def html(_r):
        return web.Response(text="<html><body>maintenance</body></html>", content_type="text/html")

    async def huge(r):
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(r)
        await response.write(b"[" + b"1," * (MAX_BODY // 2) + b'"needle"')
        with contextlib.suppress(ConnectionError, RuntimeError):
            for _ in range(64):  # 64 MiB at most; the client hangs up long before
                await response.write(b"2," * (1 << 19))
        return response

    async def echo(r):
        server.seen.append(("Host", r.headers.get("Host", "")))
        return web.json_response({"host": r.headers.get("Host"), "token": r.headers.get("X-Token")})

    async def dist_bad(_r):
        return web.json_response({"storagedriver_filesystem": "no space left on device",
                                  "redis": "dial tcp: connection refused"}, status=503)

    async def dist_long(_r):
        return web.json_response({f"check{i:02}": "x" * 50 for i in range(20)}, status=503)

    async def harbor_db_down(_r):
        return web.json_response({"status": "unhealthy", "components": [
            {"name": "core", "status": "healthy"},
            {"name": "database", "status": "unhealthy", "error": "dial tcp 10.0.0.5:5432: i/o timeout"},
            {"name": "trivy", "status": "healthy"}]})

    async def harbor_trivy_down(_r):
        return web.json_response({"status": "unhealthy", "components": [
            {"name": "core", "status": "healthy"}, {"name": "registry", "status": "healthy"},
            {"name": "trivy", "status": "unhealthy", "error": "scanner unreachable"}]})

    async def harbor_500(_r):
        return web.Response(status=500, text="internal error")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/json", doc)
    app.router.add_get("/slow", slow)
    app.router.add_get("/garbage", garbage)
    app.router.add_get("/html", html)
    app.router.add_get("/nested", _raw(b"[" * 30000 + b"]" * 30000))
    app.router.add_get("/huge", huge)
    app.router.add_get("/echo", echo)
    app.router.add_get("/dist/ok", _json({}))
    app.router.add_get("/dist/bad", dist_bad)
    app.router.add_get("/dist/long", dist_long)
    app.router.add_get("/dist/list", _json([]))
    app.router.add_get("/harbor/db-down", harbor_db_down)
    app.router.add_get("/harbor/trivy-down", harbor_trivy_down)
    app.router.add_get("/harbor/500", harbor_500)
    app.router.add_get("/harbor/no-components", _json({"status": "healthy"}))
    server.app = app
    return server


def _raw(body: bytes) -> Callable[[web.Request], Any]:
    """A handler answering `body` as (so it claims) JSON."""
    async def handler(_r: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")
    return handler


def _json(data: Any, status: int = 200) -> Callable[[web.Request], Any]:
    """A handler answering `data` as JSON."""
    async def handler(_r: web.Request) -> web.Response:
        return web.json_response(data, status=status)
    return handler


def registry_server(*, auth: bool = False, readonly: bool = False, deletes: bool = True,
                    absolute_location: bool = False, base_body: bytes = b"{}", hangup_put: bool = False,
                    short_range: bool = False) -> Server:
    """A minimal OCI registry: /v2/, one manifest lib/app:v1, one blob, blob uploads (chunks by PATCH,
    each answer's Location carrying a new signed-looking state, as CNCF distribution does)."""
    server = Server()
    blobs = {("lib/app", KNOWN_BLOB)}
    uploads: dict[str, bytes] = {}

    async def handle(r: web.Request) -> web.Response:
        server.seen.append((r.method, r.path_qs))
        path = r.path
        if auth:
            return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="https://auth.test/token"'})
        if path == "/v2/":
            return web.Response(body=base_body, content_type="application/json",
                                headers={"Docker-Distribution-API-Version": "registry/2.0"})
        if path == "/api/v2.0/health":
            return web.json_response({"status": "healthy", "components": [{"name": "core", "status": "healthy"}]})
        if m := re.fullmatch(r"/v2/(.+)/manifests/([^/]+)", path):
            if (m[1], m[2]) == ("lib/app", "v1") and OCI_MANIFEST in r.headers.get("Accept", ""):
                return web.Response(status=200, headers={"Content-Type": OCI_MANIFEST})
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)
        if (m := re.fullmatch(r"/v2/(.+)/blobs/uploads/", path)) and r.method == "POST":
            upload = f"u-{len(server.seen)}"
            uploads[upload] = b""
            location = f"/v2/{m[1]}/blobs/uploads/{upload}?_state={upload}-0%3D"
            if absolute_location:  # a host name we could not even resolve: the probe must keep dialing us
                location = "http://registry.invalid:1" + location
            return web.Response(status=202, headers={"Location": location})
        if m := re.fullmatch(r"/v2/(.+)/blobs/uploads/([^/]+)", path):
            upload = m[2]
            if upload not in uploads or r.query.get("_state") != f"{upload}-{len(uploads[upload])}=":
                return web.json_response({"errors": [{"code": "BLOB_UPLOAD_INVALID"}]}, status=400)
            if r.method == "DELETE":
                del uploads[upload]
                return web.Response(status=204)
            body = await r.read()
            if hangup_put and r.method == "PUT":
                r.transport.close()  # the disk hangs, a proxy gives up: no answer at all
                await asyncio.sleep(0.05)
                return web.Response(status=500)
            if readonly:
                return web.json_response({"errors": [{"code": "UNKNOWN", "message": "no space"}]}, status=507)
            uploads[upload] += body
            if r.method == "PATCH":
                size = len(uploads[upload])
                return web.Response(status=202, headers={
                    "Location": f"/v2/{m[1]}/blobs/uploads/{upload}?_state={upload}-{size}%3D",
                    "Range": f"0-{size - 1 - (1 if short_range else 0)}"})
            digest = r.query.get("digest", "")
            if digest != "sha256:" + hashlib.sha256(uploads[upload]).hexdigest():
                return web.json_response({"errors": [{"code": "DIGEST_INVALID"}]}, status=400)
            del uploads[upload]
            blobs.add((m[1], digest))
            return web.Response(status=201, headers={"Location": f"/v2/{m[1]}/blobs/{digest}"})
        if m := re.fullmatch(r"/v2/(.+)/blobs/([^/]+)", path):
            if r.method == "DELETE":
                if not deletes:
                    return web.json_response({"errors": [{"code": "UNSUPPORTED"}]}, status=405)
                blobs.discard((m[1], m[2]))
                return web.Response(status=202)
            return web.Response(status=200 if (m[1], m[2]) in blobs else 404)
        return web.Response(status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server.app = app
    return server


def raw_server(reply: bytes | None) -> Server:
    """Not HTTP: writes `reply` (or nothing) and hangs up."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.read(1024), 1)
            if reply:
                writer.write(reply)
                await writer.drain()
        writer.close()
    return Server(raw=handle)


SERVERS: dict[str, Callable[[], Server]] = {
    "web": web_server,
    "registry": registry_server,
    "registry-auth": lambda: registry_server(auth=True),
    "registry-readonly": lambda: registry_server(readonly=True),
    "registry-nodelete": lambda: registry_server(deletes=False),
    "registry-absolute": lambda: registry_server(absolute_location=True),
    "registry-hangup": lambda: registry_server(hangup_put=True),
    "registry-short-range": lambda: registry_server(short_range=True),
    "registry-garbage": lambda: registry_server(base_body=b"<html>not a registry</html>"),
    "not-http": lambda: raw_server(b"SSH-2.0-OpenSSH_9.6\r\nprotocol mismatch\r\n\r\n"),
    "hangup": lambda: raw_server(None),
}


def make_check(kind: str, port: int, **kw: Any) -> ProbeCheck:
    scheme = kw.pop("scheme", "https" if kind == "https" else "http")
    return ProbeCheck(kind=kind, address=kw.pop("address", HOST), port=port, scheme=scheme, **kw)


def ranges(text: str) -> tuple[StatusRange, ...]:
    out = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        out.append(StatusRange(int(low), int(high or low)))
    return tuple(out)


# -- the table -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    id: str
    server: str | None  # key of SERVERS; None: nothing listening
    kind: str
    check: dict
    ok: bool
    reason: str | tuple[str, ...]  # a substring of the reason (any one, for a tuple)
    timeout: float = 2.0


CASES = [
    # http / https (plain): status, redirects, ranges, body, json
    Case("http-ok", "web", "http", dict(path="/ok"), True, "HTTP 200"),
    Case("http-503", "web", "http", dict(path="/status/503"), False, "HTTP 503 from http://127.0.0.1:"),
    Case("http-503-url", "web", "http", dict(path="/status/503"), False, "/status/503"),
    Case("http-slow", "web", "http", dict(path="/slow"), False, "timeout after 0.3s", timeout=0.3),
    Case("http-refused", None, "http", dict(path="/ok"), False, "connection refused (127.0.0.1:"),
    Case("http-redirect-not-followed", "web", "http", dict(path="/redirect"), False, "HTTP 302"),
    Case("http-redirect-expected", "web", "http", dict(path="/redirect", expect_status=ranges("200-299,302")),
         True, "HTTP 302"),
    Case("http-range-401", "web", "http", dict(path="/status/401", expect_status=ranges("200-299,401")),
         True, "HTTP 401"),
    Case("http-range-miss", "web", "http", dict(path="/status/403", expect_status=ranges("200-299,401")),
         False, "HTTP 403"),
    Case("http-head", "web", "http", dict(path="/status/204", method="HEAD"), True, "HTTP 204"),
    Case("http-body-contains", "web", "http", dict(path="/ok", body_contains="all ok"), True, "HTTP 200"),
    Case("http-body-lacks", "web", "http", dict(path="/ok", body_contains="healthy"), False,
         "body lacks 'healthy'"),
    Case("http-garbage-contains", "web", "http", dict(path="/garbage", body_contains="ok"), False, "body lacks 'ok'"),
    Case("http-json-equals", "web", "http", dict(path="/json", json_path="status", json_equals="up"),
         True, "json 'status' = 'up'"),
    Case("http-json-bool", "web", "http", dict(path="/json", json_path="ready", json_equals="true"), True, "HTTP 200"),
    Case("http-json-number", "web", "http", dict(path="/json", json_path="count", json_equals="3"), True, "HTTP 200"),
    Case("http-json-null", "web", "http", dict(path="/json", json_path="none", json_equals="null"), True, "HTTP 200"),
    Case("http-json-index", "web", "http", dict(path="/json", json_path="items.1.state", json_equals="green"),
         False, "json 'items.1.state' is 'red', expected 'green'"),
    Case("http-json-index-ok", "web", "http", dict(path="/json", json_path="items.0.state", json_equals="green"),
         True, "HTTP 200"),
    Case("http-json-exists", "web", "http", dict(path="/json", json_path="items.0.name"), True, "'db'"),
    Case("http-json-missing", "web", "http", dict(path="/json", json_path="items.5.name"), False,
         "json path 'items.5.name' not found"),
    Case("http-json-garbage", "web", "http", dict(path="/garbage", json_path="status"), False,
         "body is not JSON (302 bytes, not text)"),
    Case("http-json-html", "web", "http", dict(path="/html", json_path="status"), False,
         "body is not JSON ('<html><body>maintenance</body></html>')"),
    Case("http-json-nested", "web", "http", dict(path="/nested", json_path="0"), False, "body is not JSON"),
    Case("dist-json-nested", "web", "distribution", dict(path="/nested"), False, "body is not JSON"),
    Case("http-huge-json", "web", "http", dict(path="/huge", json_path="0"), False, "body too big to parse"),
    Case("http-huge-contains", "web", "http", dict(path="/huge", body_contains="needle"), False,
         "body lacks 'needle' (first 64 KiB)"),
    Case("http-huge-status-only", "web", "http", dict(path="/huge"), True, "HTTP 200"),
    Case("http-host-header", "web", "http", dict(path="/echo", host_header="registry.test",
                                                   body_contains='"host": "registry.test"'), True, "HTTP 200"),
    Case("http-headers-sent", "web", "http", dict(path="/echo", headers=(("X-Token", "s3cret"),),
                                                    json_path="token", json_equals="s3cret"), True, "HTTP 200"),
    Case("http-not-http", "not-http", "http", dict(path="/"), False, "bad HTTP response (127.0.0.1:"),
    Case("http-hangup", "hangup", "http", dict(path="/"), False, "server disconnected"),
    Case("http-dns-failure", None, "http", dict(path="/", address="nonexistent.invalid"), False,
         ("DNS lookup failed for nonexistent.invalid", "timeout after")),  # a resolver may be unreachable
    # distribution
    Case("dist-ok", "web", "distribution", dict(path="/dist/ok"), True, "HTTP 200"),
    Case("dist-503-json", "web", "distribution", dict(path="/dist/bad"), False,
         "redis: dial tcp: connection refused; storagedriver_filesystem: no space left on device"),
    Case("dist-503-long", "web", "distribution", dict(path="/dist/long"), False, "check00: xxx"),
    Case("dist-503-text", "web", "distribution", dict(path="/status/503"), False, "HTTP 503 from"),
    Case("dist-500", "web", "distribution", dict(path="/status/500"), False, "HTTP 500 from"),
    Case("dist-not-object", "web", "distribution", dict(path="/dist/list"), False, "not an object"),
    Case("dist-garbage", "web", "distribution", dict(path="/garbage"), False, "body is not JSON"),
    Case("dist-huge", "web", "distribution", dict(path="/huge"), False, "body too big to parse (over 64 KiB)"),
    Case("dist-slow", "web", "distribution", dict(path="/slow"), False, "timeout after 0.3s", timeout=0.3),
    Case("dist-refused", None, "distribution", dict(path="/debug/health"), False, "connection refused"),
    Case("dist-redirect", "web", "distribution", dict(path="/redirect"), False, "HTTP 302"),
    # harbor
    Case("harbor-ok-default-path", "registry", "harbor", dict(), True, "1 component healthy"),
    Case("harbor-db-matters", "web", "harbor", dict(path="/harbor/db-down", components=("core", "database")),
         False, "harbor component 'database' unhealthy: dial tcp 10.0.0.5:5432: i/o timeout"),
    Case("harbor-db-any", "web", "harbor", dict(path="/harbor/db-down"), False, "harbor component 'database'"),
    Case("harbor-trivy-ignored", "web", "harbor", dict(path="/harbor/trivy-down", components=("core", "registry")),
         True, "2 components healthy"),
    Case("harbor-trivy-all", "web", "harbor", dict(path="/harbor/trivy-down"), False,
         "harbor component 'trivy' unhealthy: scanner unreachable"),
    Case("harbor-missing", "web", "harbor", dict(path="/harbor/trivy-down", components=("core", "jobservice")),
         False, "harbor component 'jobservice' not reported"),
    Case("harbor-no-components", "web", "harbor", dict(path="/harbor/no-components"), False,
         "lacks a 'components' list"),
    Case("harbor-500-text", "web", "harbor", dict(path="/harbor/500"), False, "HTTP 500 from"),
    Case("harbor-garbage", "web", "harbor", dict(path="/garbage"), False, "body is not JSON"),
    Case("harbor-slow", "web", "harbor", dict(path="/slow"), False, "timeout after 0.3s", timeout=0.3),
    Case("harbor-refused", None, "harbor", dict(), False, "connection refused"),
    # oci
    Case("oci-ok", "registry", "oci", dict(), True, "HTTP 200"),
    Case("oci-401-alive", "registry-auth", "oci", dict(), True, "HTTP 401 (auth required: alive)"),
    Case("oci-401-not-in-range", "registry-auth", "oci", dict(expect_status=ranges("200")), False, "HTTP 401"),
    Case("oci-garbage", "registry-garbage", "oci", dict(), False, "body is not JSON"),
    Case("oci-refused", None, "oci", dict(), False, "connection refused"),
    Case("oci-canary-manifest", "registry", "oci", dict(canary_manifest="lib/app:v1"), True, "canary manifest ok"),
    Case("oci-canary-manifest-missing", "registry", "oci", dict(canary_manifest="lib/app:v2"), False,
         "canary manifest lib/app:v2: HEAD returned 404"),
    Case("oci-canary-blob", "registry", "oci", dict(canary_blob=f"lib/app@{KNOWN_BLOB}"), True, "canary blob ok"),
    Case("oci-canary-blob-missing", "registry", "oci", dict(canary_blob="lib/app@sha256:" + "0" * 64), False,
         "canary blob lib/app@sha256:000"),
    Case("oci-write", "registry", "oci", dict(write_canary="geotm/canary"), True, "canary write ok"),
    Case("oci-write-absolute-location", "registry-absolute", "oci", dict(write_canary="geotm/canary"), True,
         "canary write ok"),
    Case("oci-write-deletes-disabled", "registry-nodelete", "oci", dict(write_canary="geotm/canary"), True,
         "canary write ok"),
    Case("oci-write-readonly", "registry-readonly", "oci", dict(write_canary="geotm/canary"), False,
         "write canary: PATCH returned 507"),
    Case("oci-write-short-range", "registry-short-range", "oci", dict(write_canary="geotm/canary"), False,
         "write canary: PATCH took Range '0-"),
    Case("oci-write-hangup", "registry-hangup", "oci", dict(write_canary="geotm/canary"), False,
         "write canary: PUT failed: server disconnected"),
    Case("oci-write-auth", "registry-auth", "oci", dict(write_canary="geotm/canary"), False,
         "write canary: POST returned 401"),
    # tcp
    Case("tcp-ok", "web", "tcp", dict(), True, "connected"),
    Case("tcp-refused", None, "tcp", dict(), False, "connection refused (127.0.0.1:"),
    Case("tcp-dns-failure", None, "tcp", dict(address="nonexistent.invalid"), False,
         ("DNS lookup failed for nonexistent.invalid", "timeout after")),
]


async def run_case(case: Case) -> tuple[ProbeResult, Server | None]:
    server = SERVERS[case.server]() if case.server else None
    async with make_session() as session:
        if server is None:
            result = await run_check(make_check(case.kind, free_port(), **case.check), session, case.timeout)
        else:
            async with serving(server) as port:
                result = await run_check(make_check(case.kind, port, **case.check), session, case.timeout)
    return result, server


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_check(case: Case) -> None:
    result, _server = await run_case(case)
    assert result.ok is case.ok, result
    expected = case.reason if isinstance(case.reason, tuple) else (case.reason,)
    assert any(text in result.reason for text in expected), result
    assert 0 <= result.latency < case.timeout + 0.5
    assert len(result.reason) <= 200


async def test_distribution_reason_truncated() -> None:
    result, _ = await run_case(next(c for c in CASES if c.id == "dist-503-long"))
    assert result.reason.endswith("...") and len(result.reason) == 200
    assert result.status_code == 503


async def test_status_code_reported() -> None:
    ok, _ = await run_case(Case("x", "web", "http", dict(path="/ok"), True, ""))
    bad, _ = await run_case(Case("x", "web", "http", dict(path="/status/418"), False, ""))
    refused, _ = await run_case(Case("x", None, "http", dict(path="/"), False, ""))
    assert (ok.status_code, bad.status_code, refused.status_code) == (200, 418, None)


async def test_huge_body_read_is_bounded() -> None:
    started = time.monotonic()
    result, _ = await run_case(Case("x", "web", "distribution", dict(path="/huge"), False, ""))
    assert not result.ok and time.monotonic() - started < 2


async def test_write_canary_reuses_one_blob() -> None:
    """Every round uploads the same bytes (one digest, so one blob in the registry's storage), sent
    in a PATCH before the registry learns the digest, committed by an empty PUT, then unlinked."""
    server = registry_server()
    async with make_session() as session, serving(server) as port:
        for _ in range(3):
            assert (await run_check(make_check("oci", port, write_canary="geotm/canary"), session, 2)).ok
    steps = [(method, qs) for method, qs in server.seen if "/geotm/canary/" in qs]
    assert [method for method, _ in steps] == ["POST", "PATCH", "PUT", "DELETE"] * 3
    puts = [qs for method, qs in steps if method == "PUT"]
    assert {p.split("digest=")[1] for p in puts} == {CANARY_DIGEST}
    assert CANARY_DIGEST == "sha256:" + hashlib.sha256(CANARY_CONTENT).hexdigest()
    assert all(f"-{len(CANARY_CONTENT)}%3D&digest=" in p for p in puts)  # the PATCH's Location used
    assert [qs.split("/blobs/")[1] for method, qs in steps if method == "DELETE"] == [CANARY_DIGEST] * 3


async def test_write_canary_failure_cancels_the_upload() -> None:
    server = registry_server(readonly=True)
    async with make_session() as session, serving(server) as port:
        result = await run_check(make_check("oci", port, write_canary="geotm/canary"), session, 2)
    assert not result.ok and result.status_code == 507
    methods = [(m, qs.split("?")[0]) for m, qs in server.seen]
    patch_path = next(p for m, p in methods if m == "PATCH")
    assert ("DELETE", patch_path) in methods  # the abandoned upload was deleted


async def test_canary_manifest_sends_oci_and_docker_accept() -> None:
    server = registry_server()
    async with make_session() as session, serving(server) as port:
        assert (await run_check(make_check("oci", port, canary_manifest="lib/app:v1"), session, 2)).ok
    assert ("HEAD", "/v2/lib/app/manifests/v1") in server.seen


async def test_cancellation_propagates() -> None:
    server = web_server()
    async with make_session() as session, serving(server) as port:
        task = asyncio.create_task(run_check(make_check("http", port, path="/slow"), session, 5))
        await harness.wait_until_async(lambda: ("GET", "/slow") in server.seen, 5, "the check in flight")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_unknown_kind_and_bad_ca_file_do_not_raise(tmp_path: Path) -> None:
    async with make_session() as session:
        odd = await run_check(make_check("gopher", free_port()), session, 1)
        bad_ca = await run_check(make_check("https", free_port(), ca_file=str(tmp_path / "none.pem")), session, 1)
        (tmp_path / "junk.pem").write_text("not a certificate")
        junk_ca = await run_check(make_check("https", free_port(), ca_file=str(tmp_path / "junk.pem")), session, 1)
    assert not odd.ok and "unknown check kind" in odd.reason
    assert not bad_ca.ok and "cannot read ca_file" in bad_ca.reason
    assert not junk_ca.ok and "cannot load ca_file" in junk_ca.reason


async def test_session_keeps_no_cookies() -> None:
    async def set_cookie(_r):
        response = web.Response(text="ok")
        response.set_cookie("session", "abc")
        return response

    async def echo(r):
        return web.Response(text=r.headers.get("Cookie", "no cookie"))

    app = web.Application()
    app.router.add_get("/set", set_cookie)
    app.router.add_get("/echo", echo)
    async with make_session() as session, serving(Server(app=app)) as port:
        await run_check(make_check("http", port, path="/set"), session, 2)
        result = await run_check(make_check("http", port, path="/echo", body_contains="no cookie"), session, 2)
    assert result.ok, result


# -- TLS -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA and a leaf for registry.test and 127.0.0.1, signed by it (openssl command line)."""
    require_tool("openssl", "to make the test CA and leaf certificate")
    d = tmp_path_factory.mktemp("pki")
    ext = d / "leaf.ext"
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:registry.test,IP:127.0.0.1\n"
                   "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    commands = [
        ["openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
         "-subj", "/CN=geotm test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["openssl", "req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=registry.test"],
        ["openssl", "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext"],
    ]
    for command in commands:
        subprocess.run(command, cwd=d, check=True, capture_output=True, timeout=20)
    return {"ca": str(d / "ca.pem"), "cert": str(d / "leaf.pem"), "key": str(d / "leaf.key")}


TLS_CASES = [
    # id, check kwargs (ca_file "CA" is replaced by the test CA), ok, reason
    ("ca-file", dict(ca_file="CA"), True, "HTTP 200"),
    ("ca-file-host-header", dict(ca_file="CA", host_header="registry.test"), True, "HTTP 200"),
    ("ca-file-host-header-port", dict(ca_file="CA", host_header="registry.test:443"), True, "HTTP 200"),
    ("ca-file-wrong-name", dict(ca_file="CA", host_header="other.test"), False, "TLS certificate verify failed"),
    ("ca-file-wrong-name-why", dict(ca_file="CA", host_header="other.test"), False, "other.test"),
    ("system-cas-only", dict(), False, "TLS certificate verify failed (127.0.0.1:"),
    ("no-verify", dict(tls_verify=False), True, "HTTP 200"),
    ("no-verify-wrong-name", dict(tls_verify=False, host_header="other.test"), True, "HTTP 200"),
]


@pytest.mark.parametrize("kind", ["https", "oci"])
@pytest.mark.parametrize("case_id,check_kw,ok,reason", TLS_CASES, ids=[c[0] for c in TLS_CASES])
async def test_tls(pki: dict[str, str], kind: str, case_id: str, check_kw: dict, ok: bool, reason: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki["cert"], pki["key"])
    check_kw = {k: (pki["ca"] if v == "CA" else v) for k, v in check_kw.items()}
    server = registry_server()
    async with make_session() as session, serving(server, context) as port:
        result = await run_check(make_check(kind, port, scheme="https", path="/v2/", **check_kw), session, 2)
    assert result.ok is ok, result
    assert reason in result.reason, result


async def test_plain_http_to_tls_port_fails(pki: dict[str, str]) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki["cert"], pki["key"])
    async with make_session() as session, serving(registry_server(), context) as port:
        result = await run_check(make_check("http", port, path="/v2/"), session, 2)
    assert not result.ok and result.reason, result


# -- settings from the config file reach the check unchanged -----------------------------------------
# The config model owns the defaults; probes runs what the config says (a set expect_status or path is
# never replaced by a guess). Each case: the check's YAML keys, the server, ok, reason, request path seen.
CONFIG_CASES = [
    ("oci-default-accepts-401", {"kind": "oci"}, "registry-auth", True, "HTTP 401 (auth required: alive)", "/v2/"),
    ("oci-2xx-only-401-down", {"kind": "oci", "expect_status": "200-299"}, "registry-auth", False, "HTTP 401",
     "/v2/"),
    ("oci-2xx-only-200-ok", {"kind": "oci", "expect_status": "200-299"}, "registry", True, "HTTP 200", "/v2/"),
    ("oci-explicit-401", {"kind": "oci", "expect_status": "200-299,401"}, "registry-auth", True, "HTTP 401",
     "/v2/"),
    ("oci-explicit-root-path", {"kind": "oci", "path": "/"}, "registry", False, "HTTP 404", "/"),
    ("http-default-2xx", {"kind": "http", "path": "/status/401"}, "web", False, "HTTP 401", None),
    ("harbor-default-path", {"kind": "harbor"}, "registry", True, "1 component healthy", "/api/v2.0/health"),
    ("harbor-expect-status-kept", {"kind": "harbor", "expect_status": "204"}, "registry", False, "HTTP 200",
     "/api/v2.0/health"),
]


@pytest.mark.parametrize("keys,server_name,ok,reason,path", [c[1:] for c in CONFIG_CASES],
                         ids=[c[0] for c in CONFIG_CASES])
async def test_config_settings_reach_the_check(keys, server_name, ok, reason, path) -> None:
    from probes.targets import targets_of
    from tests.dnstest import config_from, example_dict

    server = SERVERS[server_name]()
    async with make_session() as session, serving(server) as port:
        data = example_dict()
        replica = data["registries"]["contoso"]["replicas"]["eastus"]
        replica["probe"]["checks"] = [{"scheme": "http", "address": HOST, "port": port, **keys}]
        target = next(t for t in targets_of(config_from(data)) if t.key == ("contoso", "eastus"))
        result = await run_check(target.spec.checks[0], session, 2)
    assert result.ok is ok and reason in result.reason, result
    if path is not None:
        assert [p for _, p in server.seen] == [path]
