"""The probe service's HTTP API: GET /v1/health (versioned, ETag), /healthz, /metrics."""
from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from probes.scheduler import ProbeService


def etag_of(service: ProbeService) -> str:
    return f'"{service.instance}-{service.generation}"'


def make_app(service: ProbeService) -> web.Application:
    app = web.Application()

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
            return web.json_response({"ok": False, "stale": stale}, status=503)
        return web.json_response({"ok": True, "targets": len(service.targets), "generation": service.generation})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=service.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/v1/health", health)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app
