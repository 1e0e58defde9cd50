"""One stand-in replica: its fault state, registry content and tokens, the aiohttp app that serves them (health endpoints, /token, /v2), and its listeners, bound or closed (refuse) as its mode changes."""
from __future__ import annotations

import asyncio
import ssl
from typing import Any

import structlog
from aiohttp import web

from dnsd.common.hostport import format_host_port
from dnsd.common.lifecycle import serve_http
from standin.faults import MODES, Faults, fault_middleware
from standin.registry import MAX_REQUEST, REPO_NAME, Storage, route
from standin.responses import API_VERSION, harbor_health, json_response, oci_error
from standin.targets import Target
from standin.tokens import TokenAuth, TokenService

log = structlog.get_logger(__name__)

SHUTDOWN_GRACE = 0.5  # seconds in-flight requests get when listeners close


class ReplicaBackend:
    """One replica: its mode, its storage, and the runner serving its listeners (None while refusing)."""

    def __init__(self, target: Target, ssl_context: ssl.SSLContext | None = None,
                 token_auth: TokenAuth | None = None):
        self.target = target
        self.registry = target.registry
        self.replica = target.replica
        self.ssl_context = ssl_context
        self.faults = Faults()
        self.storage = Storage()
        self.tokens = TokenService(token_auth)
        self.lock = asyncio.Lock()
        self.runner: web.AppRunner | None = None

    @property
    def key(self) -> str:
        return f"{self.registry}/{self.replica}"

    def describe(self) -> dict[str, Any]:
        auth = {"auth": "token", "tokens_issued": self.tokens.issued} if self.tokens.auth else {}
        return {**auth, "registry": self.registry, "replica": self.replica, **self.faults.describe(),
                "listeners": [format_host_port(*w) for w in self.target.listeners],
                "tls": [format_host_port(*w) for w in self.target.listeners
                        if w in self.target.tls and self.ssl_context],
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
            self.faults.release_waiters()  # so no slow reply is still pending when the listeners close
            await runner.cleanup()

    async def set_mode(self, mode: str, delay: float | None = None, reason: str | None = None) -> None:
        """Switch mode (binding or unbinding listeners for refuse); one change at a time."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        async with self.lock:
            old = self.faults.mode
            if mode == "refuse":
                await self.unbind()
            else:
                await self.bind()  # OSError leaves the mode as it was
            self.faults.switch(mode, delay, reason)
        state = self.faults.describe()
        log.info("mode_changed", registry=self.registry, replica=self.replica, mode=mode, previous=old,
                 delay=state["delay"], reason=state["reason"])


def make_replica_app(backend: ReplicaBackend) -> web.Application:
    """The endpoints one replica serves, behind the middleware of its failure modes."""
    async def base(request: web.Request) -> web.Response:
        refused = backend.tokens.authorize(request, None)
        if refused is not None:
            return refused
        return json_response({}, headers=dict(API_VERSION))

    async def debug_health(_request: web.Request) -> web.Response:
        return json_response({})

    async def harbor(_request: web.Request) -> web.Response:
        return json_response(harbor_health(True, ""))

    async def v2(request: web.Request) -> web.StreamResponse:
        found = route(request.match_info["tail"])
        if found is None:
            return oci_error(404, "NOT_FOUND", "no such endpoint")
        handler, params = found
        name = params["name"]
        if not REPO_NAME.fullmatch(name):
            return oci_error(400, "NAME_INVALID", "invalid repository name", {"name": name})
        refused = backend.tokens.authorize(request, name)
        if refused is not None:
            return refused
        return await handler(backend.storage, backend.faults, request, **params)

    app = web.Application(client_max_size=MAX_REQUEST, middlewares=[fault_middleware(backend.faults)])
    app.router.add_get("/v2/", base)
    app.router.add_get("/v2", base)
    app.router.add_get("/debug/health", debug_health)
    app.router.add_get("/api/v2.0/health", harbor)
    app.router.add_get("/token", backend.tokens.issue)
    app.router.add_route("*", "/v2/{tail:.+}", v2)
    return app
