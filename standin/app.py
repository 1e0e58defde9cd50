"""The stand-in backend as a whole: every replica of the targets (standin.replica) and the control API that lists them and switches their failure modes.

    targets_from_config(config) / make_targets([(registry, replica, [(address, port)])]) -> [Target]
    backend = Backend(targets, ssl_context=None); await backend.start(); await backend.start_control(host, port)
    await backend.set_mode(registry, replica, "readonly"); backend.status(); await backend.close()

Control API: GET /replicas, GET /replicas/{registry}/{replica}, POST /replicas/{registry}/{replica}/mode
with {"mode": ..., "delay": ..., "reason": ...}, GET /healthz. The modes are described in
standin.faults, the registry in standin.registry, token mode in standin.tokens.
"""
from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any

import structlog
from aiohttp import web

from dnsd.common.hostport import format_host_port
from dnsd.common.lifecycle import serve_http
from standin.faults import mode_request_problem
from standin.replica import SHUTDOWN_GRACE, ReplicaBackend
from standin.responses import json_response
from standin.targets import Target, make_targets
from standin.tokens import TokenAuth

log = structlog.get_logger(__name__)

DEFAULT_CONTROL = ("127.0.0.1", 5399)


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
                                listeners=[format_host_port(*w) for w in sorted(replica.target.tls)],
                                hint="an https check dials it; pass a certificate to serve TLS")
                await replica.bind()
                log.info("listening", registry=replica.registry, replica=replica.replica,
                         listeners=replica.describe()["listeners"])
        except BaseException:
            await self.close()
            raise

    async def start_control(self, host: str = DEFAULT_CONTROL[0], port: int = DEFAULT_CONTROL[1]) -> tuple[str, int]:
        """Serve the control API; returns the address bound (port 0 picks a free one)."""
        runner = await serve_http(self.control_app(), [(host, port)], "control", reuse_address=True,
                                  shutdown_timeout=SHUTDOWN_GRACE)
        self._control = runner
        bound = runner.addresses[0]
        self.control_address = (bound[0], bound[1])
        log.info("control_listening", address=format_host_port(*self.control_address))
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
            return json_response({"replicas": self.status()})

        async def show(request: web.Request) -> web.Response:
            key = (request.match_info["registry"], request.match_info["replica"])
            if key not in self.replicas:
                return json_response({"error": f"no replica {key[0]}/{key[1]}"}, 404)
            return json_response(self.replicas[key].describe())

        async def set_mode(request: web.Request) -> web.Response:
            registry, replica = request.match_info["registry"], request.match_info["replica"]
            if (registry, replica) not in self.replicas:
                return json_response({"error": f"no replica {registry}/{replica}"}, 404)
            try:
                body = await request.json()
            except ValueError:
                return json_response({"error": "expected a JSON body like {\"mode\": \"unhealthy\"}"}, 400)
            problem = mode_request_problem(body)
            if problem:
                return json_response({"error": problem}, 400)
            try:
                state = await self.set_mode(registry, replica, body["mode"], body.get("delay"), body.get("reason"))
            except OSError as err:
                return json_response({"error": str(err.strerror or err)}, 500)
            return json_response(state)

        async def healthz(_request: web.Request) -> web.Response:
            return json_response({"ok": True})

        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/replicas", list_replicas)
        app.router.add_get("/replicas/{registry}/{replica}", show)
        app.router.add_post("/replicas/{registry}/{replica}/mode", set_mode)
        app.router.add_get("/healthz", healthz)
        return app
