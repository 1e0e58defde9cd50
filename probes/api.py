"""The probe service's HTTP API: GET /v1/health (versioned, ETag; bearer token when configured), /healthz,
/metrics.

Access policy with a token: /v1/health (the verdicts dnsd acts on) always needs it; /metrics needs it
unless public_metrics; /healthz stays open for orchestrators' liveness checks and then says only
ok / not ok and counts, never which targets. Refusals are 401 and logged, rate-limited.
"""
from __future__ import annotations

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from dnsd.common.secretfile import SecretFile, SecretUnreadable, bearer_matches
from dnsd.common.logs import LogGate
from probes.scheduler import ProbeService

log = structlog.get_logger(__name__)


def etag_of(service: ProbeService) -> str:
    return f'"{service.instance}-{service.generation}"'


def make_app(service: ProbeService, token: SecretFile | None = None, public_metrics: bool = True) -> web.Application:
    protected = {"/v1/health"} | (set() if public_metrics else {"/metrics"})
    refusals = LogGate(interval=10.0, burst=1)

    @web.middleware
    async def require_token(request: web.Request, handler):
        if token is None or request.path not in protected:
            return await handler(request)
        try:
            expected = token.value()
        except SecretUnreadable as err:  # never fall back to serving without the token
            if refusals.admit() is not None:
                log.error("probes_token_unreadable", error=str(err), effect="every protected request refused")
            return web.json_response({"error": "the probes token cannot be read"}, status=503)
        if bearer_matches(request.headers.get("Authorization"), expected):
            return await handler(request)
        suppressed = refusals.admit()
        if suppressed is not None:
            log.warning("probes_request_refused", path=request.path, remote=request.remote,
                        why="missing bearer token" if not request.headers.get("Authorization") else "wrong token",
                        suppressed=suppressed)
        return web.json_response({"error": "missing or wrong bearer token"}, status=401,
                                 headers={"WWW-Authenticate": 'Bearer realm="geotm-probes"'})

    app = web.Application(middlewares=[require_token], client_max_size=64 * 1024)

    async def health(request: web.Request) -> web.Response:
        stale = service.stale_targets()
        if stale:
            # our verdicts are not current: say so rather than serve old news as fresh
            return web.json_response({"error": "probe loop behind", "stale": stale}, status=503)
        etag = etag_of(service)
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.json_response(service.document().to_json(), headers={"ETag": etag, "Cache-Control": "no-cache"})

    async def healthz(request: web.Request) -> web.Response:
        stale = service.stale_targets()
        if stale:
            return web.json_response({"ok": False, "stale": stale if token is None else len(stale)}, status=503)
        return web.json_response({"ok": True, "targets": len(service.targets), "generation": service.generation})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=service.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/v1/health", health)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app
