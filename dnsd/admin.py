"""dnsd's admin API (aiohttp): bearer-token auth, status, metrics. Mutations come with issue-4 work."""
from __future__ import annotations

import hmac
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from dnsd import metrics
from dnsd.model import AdminSettings

if TYPE_CHECKING:
    from dnsd.service import Dnsd

log = structlog.get_logger(__name__)

PUBLIC_METRICS, PUBLIC_STATUS_PAGE, READ, MUTATE = "metrics", "status_page", "read", "mutate"


def load_token(settings: AdminSettings) -> str | None:
    """The bearer token: from token_file if set (must exist), else the environment variable, else None."""
    if settings.token_file:
        token = Path(settings.token_file).read_text().strip()
        if not token:
            raise ValueError(f"admin token file {settings.token_file} is empty")
        return token
    if settings.token_env:
        token = os.environ.get(settings.token_env, "").strip()
        return token or None
    return None


def make_app(dnsd: Dnsd, settings: AdminSettings, token: str | None) -> web.Application:
    access: dict[str, str] = {}  # route name -> PUBLIC_METRICS / PUBLIC_STATUS_PAGE / READ / MUTATE
    registry = metrics.make_registry(dnsd)

    @web.middleware
    async def authenticate(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        route = request.match_info.route
        kind = access.get(route.name or "", MUTATE)  # an unlisted route is treated as the strictest kind
        if kind == PUBLIC_METRICS and settings.public_metrics:
            return await handler(request)
        if kind == PUBLIC_STATUS_PAGE and settings.public_status_page:
            return await handler(request)
        if token is None:
            if kind == MUTATE:
                log.warning("admin_refused", path=request.path, why="no admin token configured",
                            peer=request.remote)
                return web.json_response({"error": "no admin token is configured, so changes are refused; "
                                                   "set admin.token_file or the token environment variable"},
                                         status=403)
            return await handler(request)
        given = request.headers.get("Authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip().encode(), token.encode())):
            log.warning("admin_unauthorized", path=request.path, method=request.method, peer=request.remote)
            return web.json_response({"error": "missing or wrong bearer token"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="geotm"'})
        return await handler(request)

    app = web.Application(middlewares=[authenticate])

    def route(method: str, path: str, kind: str, handler, name: str) -> None:
        app.router.add_route(method, path, handler, name=name)
        access[name] = kind

    async def get_metrics(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def get_status(request: web.Request) -> web.Response:
        return web.json_response(status_document(dnsd))

    route("GET", "/metrics", PUBLIC_METRICS, get_metrics, "metrics")
    route("GET", "/v1/status", READ, get_status, "status")
    return app


def status_document(dnsd: Dnsd) -> dict:
    snapshot = dnsd.engine.snapshot
    now = time.time()
    registries = []
    for plan in snapshot.plans:
        reg = plan.registry
        replicas = []
        for index, rep in enumerate(reg.replicas):
            health = snapshot.health.of(reg.name, rep.name)
            replicas.append({"name": rep.name, "location": rep.location, "status": health.status.value,
                             "reason": health.reason, "age_seconds": round(now - health.since, 1) if health.since else None,
                             "global_routing": rep.global_routing, "serving": index in plan.serving})
        registries.append({"name": reg.name, "routing": reg.routing, "all_down_policy": reg.all_down.mode,
                           "all_down_active": plan.all_down, "reason": plan.reason, "replicas": replicas})
    feed = dnsd.feed
    return {"config": {"version": snapshot.config.digest[:12], "source": snapshot.config.source},
            "generation": snapshot.generation,
            "health": {"feeds": [{"url": f.url, "error": f.error,
                                  "age_seconds": round(now - f.fetched_at, 1) if f.fetched_at else None}
                                 for f in feed.feeds] if feed else [],
                       "expired": bool(feed and feed.expired)},
            "registries": registries}
