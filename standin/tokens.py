"""Token mode of the stand-in: the users allowed a token (TokenAuth), and per replica the /token service that issues tokens and the check of every /v2 request's bearer token and scope.

Like distribution with `auth: token` (`geotm-backend serve --token-auth FILE`): every /v2 request needs
`Authorization: Bearer <token>`, else 401 with `WWW-Authenticate: Bearer
realm="<scheme>://<this listener>/token",service="geotm-backend",scope="repository:<name>:<actions>"`
(pull for GET/HEAD, pull,push for POST/PUT/PATCH, delete for DELETE; `error="insufficient_scope"` when
the token lacks it). GET /token with Basic auth of a listed user issues an opaque token for the scopes
asked for, valid `ttl` seconds. Health endpoints stay open, as in distribution and Harbor.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from aiohttp import web

from dnsd.common.hostport import format_host_port
from standin.responses import API_VERSION, json_response, oci_error

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


def scope_needed(method: str, name: str) -> tuple[str, tuple[str, ...]]:
    """(challenge scope, actions the request needs) as distribution derives them from the method."""
    if method in ("GET", "HEAD"):
        return f"repository:{name}:pull", ("pull",)
    if method == "DELETE":
        return f"repository:{name}:delete", ("delete",)
    return f"repository:{name}:pull,push", ("pull", "push")


def granted(scopes: list[str]) -> set[tuple[str, str]]:
    """['repository:a/b:pull,push'] -> {('a/b', 'pull'), ('a/b', 'push')}"""
    grants = set()
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind == "repository" and name:
            grants |= {(name, action) for action in actions.split(",") if action}
    return grants


class TokenService:
    """One replica's tokens: issued by GET /token, checked on /v2. With no TokenAuth (token mode
    off) /token answers 404 and every request may go on."""

    def __init__(self, auth: TokenAuth | None):
        self.auth = auth
        self.tokens: OrderedDict[str, tuple[float, set[tuple[str, str]]]] = OrderedDict()  # -> (expiry, grants)
        self.issued = 0

    async def issue(self, request: web.Request) -> web.Response:
        """GET /token: a token for the scopes asked for, to a user with valid Basic credentials."""
        if self.auth is None:
            return oci_error(404, "NOT_FOUND", "no token service (token mode is off)")
        if self.auth.check(request.headers.get("Authorization")) is None:
            return json_response({"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}, 401,
                                 {"WWW-Authenticate": f'Basic realm="{TOKEN_SERVICE} token"'})
        token = uuid.uuid4().hex + uuid.uuid4().hex
        grants = granted(request.query.getall("scope", []))
        self.tokens[token] = (time.monotonic() + self.auth.ttl, grants)
        while len(self.tokens) > MAX_TOKENS:
            self.tokens.popitem(last=False)
        self.issued += 1
        return json_response({"token": token, "access_token": token, "expires_in": self.auth.ttl,
                              "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    def authorize(self, request: web.Request, name: str | None) -> web.Response | None:
        """None when the request may go on (token mode off, or a valid token with the scope it needs),
        else the 401 with the challenge that tells the client where to get a token."""
        if self.auth is None:
            return None
        scope, actions = scope_needed(request.method, name) if name else ("", ())
        header = request.headers.get("Authorization", "")
        entry = self.tokens.get(header[7:].strip()) if header[:7].lower() == "bearer " else None
        if entry is not None and entry[0] > time.monotonic():
            if all((name, action) in entry[1] for action in actions):
                return None
            error = ',error="insufficient_scope"'
        else:
            error = ',error="invalid_token"' if entry is not None or header else ""
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        host = format_host_port(sockname[0], sockname[1]) if sockname else request.host
        realm = f"{'https' if request.secure else 'http'}://{host}/token"
        challenge = f'Bearer realm="{realm}",service="{TOKEN_SERVICE}"' + (f',scope="{scope}"' if scope else "") + error
        return json_response({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}, 401,
                             {**API_VERSION, "WWW-Authenticate": challenge})
