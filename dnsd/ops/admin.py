"""dnsd's admin API (aiohttp): bearer-token auth; status, explain, config, audit, overrides, reload,
forwarding-cache flushes, metrics and the HTML status page. The public routes (/metrics, /) show health only unless the
request carries the token; details (config path, feed URLs, override actors and reasons, query
counts) need it."""
from __future__ import annotations

import base64
import binascii
import hmac
from typing import TYPE_CHECKING, Awaitable, Callable

import structlog
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST

from dnsd import records
from dnsd.ops import metrics
from dnsd.ops.admintoken import UnusableToken
from dnsd.answers.answer import RCODE_NAMES
from dnsd.config.reader import parse_duration as parse_config_duration
from dnsd.ops.explain import client_context, explain, forwarding
from dnsd.model import AdminSettings
from dnsd.serving.service import (ClusterUnavailable, InvalidChange, NoSuchOverride, NotForwarding, Refused,
                                  UnknownReplica, WouldLeaveNoReplica)
from dnsd.ops.status import override_json, status_document
from dnsd.ops.statuspage import render_status_page

if TYPE_CHECKING:
    from dnsd.serving.service import Dnsd

log = structlog.get_logger(__name__)


class AdminError(Exception):
    """A request the admin API itself refuses (bad query or body): `status` is the HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# the HTTP status for each refusal of the running dnsd (dnsd.serving.service)
REFUSAL_STATUS: dict[type[Refused], int] = {InvalidChange: 400, UnknownReplica: 404, NoSuchOverride: 404,
                                            WouldLeaveNoReplica: 409, NotForwarding: 409,
                                            ClusterUnavailable: 503}

PUBLIC_METRICS, PUBLIC_STATUS_PAGE, READ, MUTATE = "metrics", "status_page", "read", "mutate"
# Bearer for the CLI and Prometheus; Basic (any user name, the token as password) so a browser can
# open the detailed status page
CHALLENGE = CIMultiDict([("WWW-Authenticate", 'Bearer realm="geotm"'), ("WWW-Authenticate", 'Basic realm="geotm"')])


def make_app(dnsd: Dnsd, settings: AdminSettings, token: str | UnusableToken | None) -> web.Application:
    access: dict[str, str] = {}  # route name -> PUBLIC_METRICS / PUBLIC_STATUS_PAGE / READ / MUTATE
    registry = metrics.make_registry(dnsd)
    public_registry = metrics.make_registry(dnsd, public=True)

    def kind_of(request: web.Request) -> str:
        return access.get(request.match_info.route.name or "", MUTATE)  # unlisted: the strictest kind

    def health_only(request: web.Request) -> bool:
        """A public route asked without a token (or none can be checked): health only, for anyone.
        Any other request that reaches a handler has passed authenticate, so it sees details."""
        kind = kind_of(request)
        public = (kind == PUBLIC_METRICS and settings.public_metrics) or \
                 (kind == PUBLIC_STATUS_PAGE and settings.public_status_page)
        return public and ("Authorization" not in request.headers or not isinstance(token, str))

    @web.middleware
    async def authenticate(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        kind = kind_of(request)
        if health_only(request):
            return await handler(request)
        if isinstance(token, UnusableToken):
            return web.json_response({"error": f"the admin token cannot be read ({token.why}); "
                                               "fix it and restart dnsd"}, status=503)
        if token is None:
            if kind == MUTATE:
                log.warning("admin_refused", path=request.path, why="no admin token configured",
                            peer=request.remote)
                return web.json_response({"error": "no admin token is configured, so changes are refused; "
                                                   "set admin.token_file or the token environment variable"},
                                         status=403)
            return await handler(request)
        if not token_matches(request.headers.get("Authorization", ""), token):
            log.warning("admin_unauthorized", path=request.path, method=request.method, peer=request.remote)
            return web.json_response({"error": "missing or wrong bearer token"}, status=401, headers=CHALLENGE)
        return await handler(request)

    @web.middleware
    async def admin_errors(request: web.Request, handler):
        try:
            return await handler(request)
        except AdminError as err:
            return web.json_response({"error": str(err)}, status=err.status)
        except Refused as err:
            return web.json_response({"error": str(err)}, status=REFUSAL_STATUS[type(err)])

    app = web.Application(middlewares=[authenticate, admin_errors])

    def route(method: str, path: str, kind: str, handler, name: str) -> None:
        app.router.add_route(method, path, handler, name=name)
        access[name] = kind

    async def get_metrics(request: web.Request) -> web.Response:
        chosen = public_registry if health_only(request) else registry
        return web.Response(body=metrics.render(chosen), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def get_status(request: web.Request) -> web.Response:
        return web.json_response(status_document(dnsd))

    async def get_config(request: web.Request) -> web.Response:
        config = dnsd.snapshot.config
        return web.json_response({"version": config.digest[:12], "digest": config.digest, "source": config.source,
                                  "generation": dnsd.snapshot.generation, "reloads": dnsd.reloads})

    async def get_explain(request: web.Request) -> web.Response:
        query = request.query
        name = query.get("name")
        if not name:
            raise AdminError(400, "give ?name= (and optionally client=, ecs=, type=)")
        try:
            qtype = records.type_number(query.get("type", "A"))
            client = client_context(query.get("client", request.remote or "127.0.0.1"), query.get("ecs"))
        except ValueError as err:
            raise AdminError(400, str(err)) from None
        snapshot, forwarder = dnsd.snapshot, dnsd.forwarder
        answer, text = explain(snapshot, name, qtype, client, forwarder)
        return web.json_response({"rcode": RCODE_NAMES.get(answer.rcode, answer.rcode),
                                  "answer": [rr.to_text() for rr in answer.answer], "explanation": text,
                                  "forwarding": forwarding(snapshot, name, qtype, client, forwarder)})

    async def get_audit(request: web.Request) -> web.Response:
        limit = _int_query(request, "limit", 100)
        return web.json_response({"entries": await dnsd.read_audit(limit)})

    async def get_overrides(request: web.Request) -> web.Response:
        return web.json_response({"overrides": [override_json(o) for o in dnsd.snapshot.overrides.values()]})

    async def post_override(request: web.Request) -> web.Response:
        body = await _json_body(request)
        duration = body.get("duration")
        if isinstance(duration, str):
            duration = parse_duration(duration)
        elif duration is not None and (isinstance(duration, bool) or not isinstance(duration, (int, float))):
            raise AdminError(400, f"duration must be seconds or text like 30m, got {duration!r}")
        override = await dnsd.request_override(_text(body, "registry"), _text(body, "replica"),
                                               _text(body, "kind"), duration, str(body.get("reason", "")),
                                               actor_of(request), force=bool(body.get("force", False)))
        return web.json_response(override_json(override), status=201)

    async def delete_override(request: web.Request) -> web.Response:
        removed = await dnsd.request_removal(request.match_info["registry"], request.match_info["replica"],
                                             actor_of(request), request.query.get("reason", ""),
                                             request.query.get("kind"))
        return web.json_response({"removed": override_json(removed)})

    async def post_reload(request: web.Request) -> web.Response:
        result = await dnsd.reload(actor=actor_of(request))
        body = {"ok": result.ok, "version": result.version, "problems": list(result.problems),
                "changes": list(result.changes), "needs_restart": list(result.needs_restart)}
        return web.json_response(body, status=200 if result.ok else 422)

    async def post_flush(request: web.Request) -> web.Response:
        """{"name": "docker.io"} forgets the forwarding cache's answers for that name (every type);
        {"all": true} empties it."""
        body = await _json_body(request)
        name = body.get("name")
        if body.get("all") is not True and (not isinstance(name, str) or not name):
            raise AdminError(400, 'give {"name": NAME} (every cached type of it) or {"all": true}')
        flushed = dnsd.flush_forwarded(name, actor_of(request))
        return web.json_response({"name": name, "flushed": flushed})

    async def status_page(request: web.Request) -> web.Response:
        page = render_status_page(status_document(dnsd), details=not health_only(request))
        return web.Response(text=page, content_type="text/html")

    route("GET", "/metrics", PUBLIC_METRICS, get_metrics, "metrics")
    route("GET", "/", PUBLIC_STATUS_PAGE, status_page, "status_page")
    route("GET", "/status", PUBLIC_STATUS_PAGE, status_page, "status_page_alias")
    route("GET", "/details", READ, status_page, "status_page_details")  # the same page, always detailed
    route("GET", "/v1/status", READ, get_status, "status")
    route("GET", "/v1/config", READ, get_config, "config")
    route("GET", "/v1/explain", READ, get_explain, "explain")
    route("GET", "/v1/audit", READ, get_audit, "audit")
    route("GET", "/v1/overrides", READ, get_overrides, "overrides")
    route("POST", "/v1/overrides", MUTATE, post_override, "override_set")
    route("DELETE", "/v1/overrides/{registry}/{replica}", MUTATE, delete_override, "override_remove")
    route("POST", "/v1/reload", MUTATE, post_reload, "reload")
    route("POST", "/v1/flush", MUTATE, post_flush, "flush")
    return app


def token_matches(given: str, token: str) -> bool:
    """`Bearer TOKEN`, or `Basic base64(any-user:TOKEN)` from a browser; compared in constant time."""
    scheme, _, value = given.partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value, validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.encode(), token.encode())


def actor_of(request: web.Request) -> str:
    """Who did it, for the audit log: the caller's word (X-Geotm-Actor) and where it came from."""
    actor = request.headers.get("X-Geotm-Actor", "").strip()[:100] or "admin-api"
    return f"{actor}@{request.remote}"


def parse_duration(text: str) -> float:
    seconds = parse_config_duration(text)
    if seconds is None:
        raise AdminError(400, f"duration {text!r}: expected something like 90s, 30m, 2h")
    return seconds


async def _json_body(request: web.Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise AdminError(400, "the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise AdminError(400, "the request body must be a JSON object")
    return body


def _text(body: dict, key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise AdminError(400, f"missing {key!r} (a string)")
    return value


def _int_query(request: web.Request, key: str, default: int) -> int:
    try:
        return max(1, min(10_000, int(request.query.get(key, default))))
    except ValueError:
        raise AdminError(400, f"?{key}= must be a number") from None

