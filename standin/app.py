"""The stand-in backend: per replica, listeners serving a tiny in-memory OCI registry plus distribution and Harbor health endpoints, with failure modes switched at run time through a control API.

    targets_from_config(config) / make_targets([(registry, replica, [(address, port)])]) -> [Target]
    backend = Backend(targets, ssl_context=None); await backend.start(); await backend.start_control(host, port)
    await backend.set_mode(registry, replica, "readonly"); backend.status(); await backend.close()

Modes (per replica):
  healthy    everything works
  unhealthy  every endpoint answers 503 (/debug/health: {"storagedriver_filesystem": reason}); Harbor's
             /api/v2.0/health answers 200 with every component unhealthy, as Harbor itself does
  readonly   reads and health endpoints fine, but writes (blob upload PATCH/PUT, monolithic POST,
             manifest PUT) answer 507: a full disk that leaves /debug/health green
  slow       every response delayed by `delay` seconds (default 30); a mode change releases them at once
  garbage    every response is 200 with random non-JSON bytes (Content-Type application/json)
  refuse     the replica's listeners are closed (connections refused); any other mode re-binds them
Blobs and manifests live in memory per replica and survive mode changes (refuse included).

Token mode (`TokenAuth`, `geotm-backend serve --token-auth FILE`): like distribution with `auth: token`,
every /v2 request needs `Authorization: Bearer <token>`, else 401 with `WWW-Authenticate: Bearer
realm="<scheme>://<this listener>/token",service="geotm-backend",scope="repository:<name>:<actions>"`
(pull for GET/HEAD, pull,push for POST/PUT/PATCH, delete for DELETE; `error="insufficient_scope"` when
the token lacks it). GET /token with Basic auth of a listed user issues an opaque token for the scopes
asked for, valid `ttl` seconds. Health endpoints stay open, as in distribution and Harbor.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import ssl
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from dnsd.common.lifecycle import serve_http

log = structlog.get_logger(__name__)

MODES = ("healthy", "unhealthy", "readonly", "slow", "garbage", "refuse")
DEFAULT_DELAY = 30.0
MAX_DELAY = 3600.0
DEFAULT_REASON = "simulated failure (geotm-backend)"
READONLY_REASON = "no space left on device"
HARBOR_COMPONENTS = ("core", "database", "jobservice", "portal", "redis", "registry", "registryctl")

MAX_REQUEST = 32 * 1024 * 1024  # largest request body a replica accepts
MAX_STORED = 256 * 1024 * 1024  # total blob + manifest bytes per replica; beyond: 507
MAX_UPLOADS = 1024  # open uploads per replica; the oldest is dropped beyond
SHUTDOWN_GRACE = 0.5  # seconds in-flight requests get when listeners close

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPO_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_ROUTES = (  # order matters: uploads before blobs
    ("upload_start", re.compile(r"(?P<name>.+)/blobs/uploads/?")),
    ("upload", re.compile(r"(?P<name>.+)/blobs/uploads/(?P<id>[^/]+)")),
    ("blob", re.compile(r"(?P<name>.+)/blobs/(?P<digest>[^/]+)")),
    ("manifest", re.compile(r"(?P<name>.+)/manifests/(?P<ref>[^/]+)")),
)


# -- targets -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Target:
    """One replica to stand in for, and where it listens."""

    registry: str
    replica: str
    listeners: tuple[tuple[str, int], ...]
    tls: frozenset[tuple[str, int]] = frozenset()  # listeners some https check dials


def make_targets(items: Iterable[tuple[str, str, Iterable[tuple[str, int]]]],
                 tls: Iterable[tuple[str, int]] = ()) -> list[Target]:
    """[(registry, replica, [(address, port), ...])] -> targets. Raises ValueError when two replicas
    claim the same address and port, or a replica has no listener."""
    owners: dict[tuple[str, int], str] = {}
    tls_set = {(str(a), int(p)) for a, p in tls}
    targets = []
    for registry, replica, listeners in items:
        unique = list(dict.fromkeys((str(address), int(port)) for address, port in listeners))
        if not unique:
            raise ValueError(f"{registry}/{replica}: no address to listen on")
        for where in unique:
            owner = owners.setdefault(where, f"{registry}/{replica}")
            if owner != f"{registry}/{replica}":
                raise ValueError(f"{_hostport(where)} is claimed by both {owner} and {registry}/{replica}")
        targets.append(Target(registry, replica, tuple(unique), frozenset(w for w in unique if w in tls_set)))
    return targets


def targets_from_config(config: Any) -> list[Target]:
    """Every replica with probe checks, listening on each distinct (address, port) of its checks;
    the ones an https check (of any kind but tcp) dials are marked TLS."""
    items, tls = [], []
    for registry in config.registries:
        for replica in registry.replicas:
            if replica.probe is None:
                continue
            checks = replica.probe.checks
            items.append((registry.name, replica.name, [(c.address, c.port) for c in checks]))
            tls += [(c.address, c.port) for c in checks if c.kind != "tcp" and c.scheme == "https"]
    return make_targets(items, tls)


def _hostport(where: tuple[str, int]) -> str:
    host, port = where
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- token mode ----------------------------------------------------------------------------------

TOKEN_SERVICE = "geotm-backend"
MAX_TOKENS = 4096  # tokens kept per replica; the oldest is forgotten beyond


@dataclass(frozen=True, slots=True)
class TokenAuth:
    users: dict[str, str]  # user -> password
    ttl: float = 300.0  # seconds a token is valid (expires_in)

    @classmethod
    def from_file(cls, path: str, ttl: float = 300.0) -> TokenAuth:
        """Lines `user:password` (blank lines and # comments skipped). ValueError says what is wrong."""
        users = {}
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                user, sep, password = line.partition(":")
                if not sep or not user or not password:
                    raise ValueError(f"{path}:{number}: expected user:password")
                users[user] = password
        if not users:
            raise ValueError(f"{path}: no user:password line")
        return cls(users, ttl)

    def check(self, header: str | None) -> str | None:
        """The user whose Basic credentials these are, or None."""
        if not header or not header.lower().startswith("basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        expected = self.users.get(user)
        if expected is None or not hmac.compare_digest(expected.encode(), password.encode()):
            return None
        return user


def _scope_needed(method: str, name: str) -> tuple[str, tuple[str, ...]]:
    """(challenge scope, actions the request needs) as distribution derives them from the method."""
    if method in ("GET", "HEAD"):
        return f"repository:{name}:pull", ("pull",)
    if method == "DELETE":
        return f"repository:{name}:delete", ("delete",)
    return f"repository:{name}:pull,push", ("pull", "push")


def _granted(scopes: list[str]) -> set[tuple[str, str]]:
    """['repository:a/b:pull,push'] -> {('a/b', 'pull'), ('a/b', 'push')}"""
    grants = set()
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind == "repository" and name:
            grants |= {(name, action) for action in actions.split(",") if action}
    return grants


# -- one replica ---------------------------------------------------------------------------------

@dataclass(slots=True)
class Storage:
    """A replica's registry content: blobs per (repo, digest), manifests per (repo, tag or digest)."""

    blobs: dict[tuple[str, str], bytes] = field(default_factory=dict)
    manifests: dict[tuple[str, str], tuple[bytes, str, str]] = field(default_factory=dict)  # body, type, digest
    uploads: OrderedDict[str, tuple[str, bytearray]] = field(default_factory=OrderedDict)
    stored: int = 0

    def room_for(self, size: int) -> bool:
        return self.stored + size <= MAX_STORED

    def put_blob(self, repo: str, digest: str, data: bytes) -> None:
        old = self.blobs.pop((repo, digest), None)
        self.stored += len(data) - (len(old) if old is not None else 0)
        self.blobs[(repo, digest)] = data

    def delete_blob(self, repo: str, digest: str) -> bool:
        old = self.blobs.pop((repo, digest), None)
        if old is not None:
            self.stored -= len(old)
        return old is not None

    def new_upload(self, repo: str) -> str:
        while len(self.uploads) >= MAX_UPLOADS:
            self.uploads.popitem(last=False)
        upload_id = uuid.uuid4().hex
        self.uploads[upload_id] = (repo, bytearray())
        return upload_id


class ReplicaBackend:
    """One replica: its mode, its storage, and the runner serving its listeners (None while refusing)."""

    def __init__(self, target: Target, ssl_context: ssl.SSLContext | None = None,
                 token_auth: TokenAuth | None = None):
        self.target = target
        self.token_auth = token_auth
        self.tokens: OrderedDict[str, tuple[float, set[tuple[str, str]]]] = OrderedDict()  # -> (expiry, grants)
        self.tokens_issued = 0
        self.registry = target.registry
        self.replica = target.replica
        self.ssl_context = ssl_context
        self.mode = "healthy"
        self.delay = DEFAULT_DELAY
        self.reason = DEFAULT_REASON
        self.storage = Storage()
        self.lock = asyncio.Lock()
        self.wake = asyncio.Event()  # set (and replaced) on every mode change: releases slow replies
        self.runner: web.AppRunner | None = None

    @property
    def key(self) -> str:
        return f"{self.registry}/{self.replica}"

    def describe(self) -> dict[str, Any]:
        auth = {"auth": "token", "tokens_issued": self.tokens_issued} if self.token_auth else {}
        return {**auth, "registry": self.registry, "replica": self.replica, "mode": self.mode,
                "delay": self.delay if self.mode == "slow" else None,
                "reason": self.reason if self.mode in ("unhealthy", "readonly") else None,
                "listeners": [_hostport(w) for w in self.target.listeners],
                "tls": [_hostport(w) for w in self.target.listeners if w in self.target.tls and self.ssl_context],
                "listening": self.runner is not None}

    async def bind(self) -> None:
        """Listen on every address of the replica; all or none (OSError names the address)."""
        if self.runner is not None:
            return
        self.runner = await serve_http(make_replica_app(self), self.target.listeners, self.key,
                                       ssl_for=lambda where: self.ssl_context if where in self.target.tls else None,
                                       reuse_address=True, shutdown_timeout=SHUTDOWN_GRACE)

    async def unbind(self) -> None:
        runner, self.runner = self.runner, None
        if runner is not None:
            self._release_waiters()  # so no slow reply is still pending when the listeners close
            await runner.cleanup()

    def _release_waiters(self) -> None:
        self.wake.set()
        self.wake = asyncio.Event()

    async def set_mode(self, mode: str, delay: float | None = None, reason: str | None = None) -> None:
        """Switch mode (binding or unbinding listeners for refuse); one change at a time."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        async with self.lock:
            old = self.mode
            if mode == "refuse":
                await self.unbind()
            else:
                await self.bind()  # OSError leaves the mode as it was
            self.mode = mode
            self.delay = DEFAULT_DELAY if delay is None else float(delay)
            default = READONLY_REASON if mode == "readonly" else DEFAULT_REASON
            self.reason = reason or default
            self._release_waiters()
        log.info("mode_changed", registry=self.registry, replica=self.replica, mode=mode, previous=old,
                 delay=self.delay if mode == "slow" else None,
                 reason=self.reason if mode in ("unhealthy", "readonly") else None)


# -- the replica's HTTP app ----------------------------------------------------------------------

def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status, content_type="application/json",
                        headers=headers)


def _oci_error(status: int, code: str, message: str, detail: Any = None) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        error["detail"] = detail
    return _json({"errors": [error]}, status, dict(API_VERSION))


def _harbor_health(healthy: bool, reason: str) -> dict[str, Any]:
    if healthy:
        components = [{"name": name, "status": "healthy"} for name in HARBOR_COMPONENTS]
    else:
        components = [{"name": name, "status": "unhealthy", "error": reason} for name in HARBOR_COMPONENTS]
    return {"status": "healthy" if healthy else "unhealthy", "components": components}


def make_replica_app(backend: ReplicaBackend) -> web.Application:
    @web.middleware
    async def modes(request: web.Request, handler):
        if backend.mode == "slow":
            wake = backend.wake
            try:
                async with asyncio.timeout(backend.delay):
                    await wake.wait()
            except TimeoutError:
                pass
        mode = backend.mode
        if mode == "garbage":
            return web.Response(body=os.urandom(512) + b"\xff\xfe not json", content_type="application/json")
        if mode == "unhealthy":
            if request.path == "/debug/health":
                return _json({"storagedriver_filesystem": backend.reason}, 503)
            if request.path == "/api/v2.0/health":
                return _json(_harbor_health(False, backend.reason))
            return _oci_error(503, "UNAVAILABLE", backend.reason)
        return await handler(request)

    async def base(request: web.Request) -> web.Response:
        refused = _authorize(backend, request, None)
        if refused is not None:
            return refused
        return _json({}, headers=dict(API_VERSION))

    async def token(request: web.Request) -> web.Response:
        if backend.token_auth is None:
            return _oci_error(404, "NOT_FOUND", "no token service (token mode is off)")
        if backend.token_auth.check(request.headers.get("Authorization")) is None:
            return _json({"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}, 401,
                         {"WWW-Authenticate": f'Basic realm="{TOKEN_SERVICE} token"'})
        issued = uuid.uuid4().hex + uuid.uuid4().hex
        grants = _granted(request.query.getall("scope", []))
        backend.tokens[issued] = (time.monotonic() + backend.token_auth.ttl, grants)
        while len(backend.tokens) > MAX_TOKENS:
            backend.tokens.popitem(last=False)
        backend.tokens_issued += 1
        ttl = backend.token_auth.ttl
        return _json({"token": issued, "access_token": issued, "expires_in": ttl,
                      "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    async def debug_health(_request: web.Request) -> web.Response:
        return _json({})

    async def harbor_health(_request: web.Request) -> web.Response:
        return _json(_harbor_health(True, ""))

    async def v2(request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        for kind, pattern in _ROUTES:
            match = pattern.fullmatch(tail)
            if match:
                name = match["name"]
                if not REPO_NAME.fullmatch(name):
                    return _oci_error(400, "NAME_INVALID", "invalid repository name", {"name": name})
                refused = _authorize(backend, request, name)
                if refused is not None:
                    return refused
                return await _OCI_HANDLERS[kind](backend, request, **match.groupdict())
        return _oci_error(404, "NOT_FOUND", "no such endpoint")

    app = web.Application(client_max_size=MAX_REQUEST, middlewares=[modes])
    app.router.add_get("/v2/", base)
    app.router.add_get("/v2", base)
    app.router.add_get("/debug/health", debug_health)
    app.router.add_get("/api/v2.0/health", harbor_health)
    app.router.add_get("/token", token)
    app.router.add_route("*", "/v2/{tail:.+}", v2)
    return app


def _authorize(backend: ReplicaBackend, request: web.Request, name: str | None) -> web.Response | None:
    """None when the request may go on (token mode off, or a valid token with the scope it needs),
    else the 401 with the challenge that tells the client where to get a token."""
    if backend.token_auth is None:
        return None
    scope, actions = _scope_needed(request.method, name) if name else ("", ())
    header = request.headers.get("Authorization", "")
    entry = backend.tokens.get(header[7:].strip()) if header[:7].lower() == "bearer " else None
    if entry is not None and entry[0] > time.monotonic():
        if all((name, action) in entry[1] for action in actions):
            return None
        error = ',error="insufficient_scope"'
    else:
        error = ',error="invalid_token"' if entry is not None or header else ""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    host = _hostport((sockname[0], sockname[1])) if sockname else request.host
    realm = f"{'https' if request.secure else 'http'}://{host}/token"
    challenge = f'Bearer realm="{realm}",service="{TOKEN_SERVICE}"' + (f',scope="{scope}"' if scope else "") + error
    return _json({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}, 401,
                 {**API_VERSION, "WWW-Authenticate": challenge})


def _full(backend: ReplicaBackend) -> web.Response:
    return _oci_error(507, "UNKNOWN", f"filesystem: {backend.reason}")


def _digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _upload_location(name: str, upload_id: str) -> str:
    return f"/v2/{name}/blobs/uploads/{upload_id}"


async def _upload_start(backend: ReplicaBackend, request: web.Request, name: str) -> web.Response:
    if request.method != "POST":
        return _oci_error(405, "UNSUPPORTED", "method not allowed")
    storage = backend.storage
    digest = request.query.get("digest")
    if digest is not None:  # monolithic upload in one POST
        data = await request.read()
        return _finish_blob(backend, name, digest, data)
    upload_id = storage.new_upload(name)
    return web.Response(status=202, headers={**API_VERSION, "Location": _upload_location(name, upload_id),
                                             "Range": "0-0", "Docker-Upload-UUID": upload_id,
                                             "Content-Length": "0"})


def _finish_blob(backend: ReplicaBackend, name: str, digest: str, data: bytes) -> web.Response:
    if backend.mode == "readonly":
        return _full(backend)
    if not DIGEST.fullmatch(digest):
        return _oci_error(400, "DIGEST_INVALID", "only sha256:<64 hex> digests are supported", {"digest": digest})
    if _digest_of(data) != digest:
        return _oci_error(400, "DIGEST_INVALID", "provided digest did not match uploaded content",
                          {"digest": digest, "actual": _digest_of(data)})
    if not backend.storage.room_for(len(data)):
        return _oci_error(507, "UNKNOWN", "filesystem: storage full")
    backend.storage.put_blob(name, digest, data)
    return web.Response(status=201, headers={**API_VERSION, "Location": f"/v2/{name}/blobs/{digest}",
                                             "Docker-Content-Digest": digest, "Content-Length": "0"})


async def _upload(backend: ReplicaBackend, request: web.Request, name: str, id: str) -> web.Response:
    storage = backend.storage
    upload = storage.uploads.get(id)
    if upload is None or upload[0] != name:
        return _oci_error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry")
    buffer = upload[1]
    if request.method == "DELETE":
        del storage.uploads[id]
        return web.Response(status=204, headers=dict(API_VERSION))
    if request.method == "GET":
        return web.Response(status=204, headers={**API_VERSION, "Location": _upload_location(name, id),
                                                 "Range": f"0-{max(len(buffer) - 1, 0)}", "Docker-Upload-UUID": id})
    if request.method not in ("PATCH", "PUT"):
        return _oci_error(405, "UNSUPPORTED", "method not allowed")
    if backend.mode == "readonly":
        return _full(backend)
    chunk = await request.read()
    if len(buffer) + len(chunk) > MAX_REQUEST:
        return _oci_error(413, "SIZE_INVALID", "upload too large for the stand-in")
    buffer += chunk
    if request.method == "PATCH":
        return web.Response(status=202, headers={**API_VERSION, "Location": _upload_location(name, id),
                                                 "Range": f"0-{max(len(buffer) - 1, 0)}", "Docker-Upload-UUID": id})
    digest = request.query.get("digest")
    if digest is None:
        return _oci_error(400, "DIGEST_INVALID", "digest parameter missing")
    response = _finish_blob(backend, name, digest, bytes(buffer))
    if response.status == 201:
        storage.uploads.pop(id, None)
    return response


async def _blob(backend: ReplicaBackend, request: web.Request, name: str, digest: str) -> web.Response:
    storage = backend.storage
    if request.method in ("GET", "HEAD"):
        data = storage.blobs.get((name, digest))
        if data is None:
            return _oci_error(404, "BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest})
        return web.Response(body=data, content_type="application/octet-stream",
                            headers={**API_VERSION, "Docker-Content-Digest": digest})
    if request.method == "DELETE":
        if backend.mode == "readonly":
            return _full(backend)
        if not storage.delete_blob(name, digest):
            return _oci_error(404, "BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest})
        return web.Response(status=202, headers={**API_VERSION, "Content-Length": "0"})
    return _oci_error(405, "UNSUPPORTED", "method not allowed")


async def _manifest(backend: ReplicaBackend, request: web.Request, name: str, ref: str) -> web.Response:
    storage = backend.storage
    if not (DIGEST.fullmatch(ref) or TAG.fullmatch(ref)):
        return _oci_error(400, "MANIFEST_INVALID", "invalid tag or digest", {"reference": ref})
    if request.method in ("GET", "HEAD"):
        stored = storage.manifests.get((name, ref))
        if stored is None:
            return _oci_error(404, "MANIFEST_UNKNOWN", "manifest unknown", {"reference": ref})
        body, content_type, digest = stored
        return web.Response(body=body, headers={**API_VERSION, "Content-Type": content_type,
                                                "Docker-Content-Digest": digest})
    if request.method == "PUT":
        if backend.mode == "readonly":
            return _full(backend)
        body = await request.read()
        digest = _digest_of(body)
        if ref.startswith("sha256:") and ref != digest:
            return _oci_error(400, "DIGEST_INVALID", "manifest digest did not match", {"digest": ref})
        if not storage.room_for(len(body)):
            return _oci_error(507, "UNKNOWN", "filesystem: storage full")
        content_type = request.headers.get("Content-Type") or "application/vnd.oci.image.manifest.v1+json"
        for key in {(name, ref), (name, digest)}:
            old = storage.manifests.get(key)
            storage.stored += len(body) - (len(old[0]) if old else 0)
            storage.manifests[key] = (body, content_type, digest)
        return web.Response(status=201, headers={**API_VERSION, "Location": f"/v2/{name}/manifests/{digest}",
                                                 "Docker-Content-Digest": digest, "Content-Length": "0"})
    if request.method == "DELETE":
        if backend.mode == "readonly":
            return _full(backend)
        stored = storage.manifests.get((name, ref))
        if stored is None:
            return _oci_error(404, "MANIFEST_UNKNOWN", "manifest unknown", {"reference": ref})
        digest = stored[2]
        for key in [k for k, v in storage.manifests.items() if k[0] == name and v[2] == digest]:
            storage.stored -= len(storage.manifests.pop(key)[0])
        return web.Response(status=202, headers={**API_VERSION, "Content-Length": "0"})
    return _oci_error(405, "UNSUPPORTED", "method not allowed")


_OCI_HANDLERS = {"upload_start": _upload_start, "upload": _upload, "blob": _blob, "manifest": _manifest}


# -- the backend and its control API -------------------------------------------------------------

class Backend:
    """Every replica of the targets, plus the control listener that switches their modes."""

    def __init__(self, targets: Iterable[Target | tuple[str, str, Iterable[tuple[str, int]]]],
                 ssl_context: ssl.SSLContext | None = None, token_auth: TokenAuth | None = None):
        """`targets`: Target values, or (registry, replica, [(address, port), ...]) tuples (validated
        by make_targets: ValueError when two replicas claim one address and port)."""
        items = list(targets)
        tls = [where for t in items if isinstance(t, Target) for where in t.tls]
        targets = make_targets([(t.registry, t.replica, t.listeners) if isinstance(t, Target) else t
                                for t in items], tls)
        self.replicas: dict[tuple[str, str], ReplicaBackend] = {}
        for target in targets:
            self.replicas[(target.registry, target.replica)] = ReplicaBackend(target, ssl_context, token_auth)
        self.ssl_context = ssl_context
        self._control: web.AppRunner | None = None
        self.control_address: tuple[str, int] | None = None

    async def start(self) -> None:
        """Bind every replica's listeners (all or none: on failure the ones bound are closed)."""
        try:
            for replica in self.replicas.values():
                if replica.target.tls and self.ssl_context is None:
                    log.warning("tls_listener_served_plain", registry=replica.registry, replica=replica.replica,
                                listeners=[_hostport(w) for w in sorted(replica.target.tls)],
                                hint="an https check dials it; pass a certificate to serve TLS")
                await replica.bind()
                log.info("listening", registry=replica.registry, replica=replica.replica,
                         listeners=replica.describe()["listeners"])
        except BaseException:
            await self.close()
            raise

    async def start_control(self, host: str = "127.0.0.1", port: int = 5399) -> tuple[str, int]:
        """Serve the control API; returns the address bound (port 0 picks a free one)."""
        runner = await serve_http(self.control_app(), [(host, port)], "control", reuse_address=True,
                                  shutdown_timeout=SHUTDOWN_GRACE)
        self._control = runner
        bound = runner.addresses[0]
        self.control_address = (bound[0], bound[1])
        log.info("control_listening", address=_hostport(self.control_address))
        return self.control_address

    async def close(self) -> None:
        if self._control is not None:
            runner, self._control = self._control, None
            await runner.cleanup()
        for replica in self.replicas.values():
            await replica.unbind()

    def status(self) -> list[dict[str, Any]]:
        return [replica.describe() for replica in self.replicas.values()]

    async def set_mode(self, registry: str, replica: str, mode: str, delay: float | None = None,
                       reason: str | None = None) -> dict[str, Any]:
        """Raises KeyError (unknown replica), ValueError (bad mode), OSError (cannot re-bind)."""
        backend = self.replicas[(registry, replica)]
        await backend.set_mode(mode, delay, reason)
        return backend.describe()

    def control_app(self) -> web.Application:
        async def list_replicas(_request: web.Request) -> web.Response:
            return _json({"replicas": self.status()})

        async def show(request: web.Request) -> web.Response:
            key = (request.match_info["registry"], request.match_info["replica"])
            if key not in self.replicas:
                return _json({"error": f"no replica {key[0]}/{key[1]}"}, 404)
            return _json(self.replicas[key].describe())

        async def set_mode(request: web.Request) -> web.Response:
            registry, replica = request.match_info["registry"], request.match_info["replica"]
            if (registry, replica) not in self.replicas:
                return _json({"error": f"no replica {registry}/{replica}"}, 404)
            try:
                body = await request.json()
            except ValueError:
                return _json({"error": "expected a JSON body like {\"mode\": \"unhealthy\"}"}, 400)
            problem = _mode_request_problem(body)
            if problem:
                return _json({"error": problem}, 400)
            try:
                state = await self.set_mode(registry, replica, body["mode"], body.get("delay"), body.get("reason"))
            except OSError as err:
                return _json({"error": str(err.strerror or err)}, 500)
            return _json(state)

        async def healthz(_request: web.Request) -> web.Response:
            return _json({"ok": True})

        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/replicas", list_replicas)
        app.router.add_get("/replicas/{registry}/{replica}", show)
        app.router.add_post("/replicas/{registry}/{replica}/mode", set_mode)
        app.router.add_get("/healthz", healthz)
        return app


def _mode_request_problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "expected a JSON object like {\"mode\": \"unhealthy\"}"
    unknown = set(body) - {"mode", "delay", "reason"}
    if unknown:
        return f"unknown field(s): {', '.join(sorted(unknown))}; allowed: mode, delay, reason"
    if body.get("mode") not in MODES:
        return f"mode must be one of {', '.join(MODES)}, got {body.get('mode')!r}"
    delay = body.get("delay")
    if delay is not None and (isinstance(delay, bool) or not isinstance(delay, (int, float))
                              or not 0 <= delay <= MAX_DELAY):
        return f"delay must be a number of seconds from 0 to {MAX_DELAY:g}, got {delay!r}"
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 200):
        return "reason must be a string of at most 200 characters"
    return None
