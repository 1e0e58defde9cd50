"""The response bodies every stand-in endpoint builds: JSON, distribution's error document and API-version header, Harbor's health document."""
from __future__ import annotations

import json
from typing import Any

from aiohttp import web

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
HARBOR_COMPONENTS = ("core", "database", "jobservice", "portal", "redis", "registry", "registryctl")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status, content_type="application/json",
                        headers=headers)


def oci_error(status: int, code: str, message: str, detail: Any = None) -> web.Response:
    """{"errors": [{"code", "message", "detail"}]} as distribution answers a failed request."""
    error: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        error["detail"] = detail
    return json_response({"errors": [error]}, status, dict(API_VERSION))


def harbor_health(healthy: bool, reason: str) -> dict[str, Any]:
    """/api/v2.0/health: every component healthy, or every one unhealthy with `reason`."""
    if healthy:
        components = [{"name": name, "status": "healthy"} for name in HARBOR_COMPONENTS]
    else:
        components = [{"name": name, "status": "unhealthy", "error": reason} for name in HARBOR_COMPONENTS]
    return {"status": "healthy" if healthy else "unhealthy", "components": components}
