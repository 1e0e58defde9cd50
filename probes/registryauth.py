"""Authentication of oci checks against registries that require it: WWW-Authenticate challenges, credentials
from a docker config.json, Basic auth and the registry token flow, tokens cached until they expire.

The flow (distribution's token spec, as Docker, skopeo and Harbor clients do it): a request answered 401
with `WWW-Authenticate: Bearer realm="https://auth.example/token",service="registry",scope="..."` ->
GET realm?service=...&scope=... with the registry's credentials as Basic auth -> `{"token": ...}` (or
`access_token`) -> the request again with `Authorization: Bearer <token>`. A `Basic` challenge (e.g.
distribution with htpasswd auth) is answered with the credentials themselves. The token asked for
covers the challenge's scope plus the check's canary repositories (pull for read canaries, pull,push
for the write canary), so one token serves a whole round; it is sent up front on later requests until
it expires, and a 401 for a scope it lacks (e.g. the canary's DELETE) fetches a wider one.

Credentials never go over plain HTTP beyond loopback: not to the registry (Basic) nor to a realm.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import aiohttp

from dnsd.model import ProbeCheck

MAX_TOKEN_RESPONSE = 64 * 1024
DEFAULT_EXPIRES_IN = 60.0  # seconds, when the token response has no expires_in (the token spec's default)
EXPIRY_MARGIN = 0.1  # renew when this fraction of a token's life is left, so no request races its expiry
MAX_CACHED_TOKENS = 256


class AuthError(Exception):
    """Authentication could not be done; the message says why (it becomes the check's reason)."""


class CredentialsError(ValueError):
    """The credentials file is unusable; the message names the file and the problem."""


# -- challenges ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # lower case: "bearer", "basic", ...
    params: dict[str, str] = field(default_factory=dict)  # names lower case, values unquoted
    token68: str | None = None


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_SCHEME = re.compile(rf"[ \t,]*({_TOKEN})(?=[ \t]|,|$)")
_PARAM = re.compile(rf'[ \t]*({_TOKEN})[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|{_TOKEN})[ \t]*(?:,|$)')
_TOKEN68 = re.compile(r"[ \t]+([A-Za-z0-9._~+/-]+=*)[ \t]*(?:,|$)")


def parse_challenges(header: str) -> list[Challenge]:
    """Every challenge in one WWW-Authenticate value (RFC 9110 §11.6.1): `Scheme token68` or
    `Scheme name=value, name="quoted, with \\"escapes\\""`, several challenges separated by commas.
    Parsing stops at text that fits neither; the challenges read before it are kept."""
    challenges: list[Challenge] = []
    pos = 0
    while True:
        scheme = _SCHEME.match(header, pos)
        if scheme is None:
            break
        pos = scheme.end()
        params: dict[str, str] = {}
        token68 = None
        while (param := _PARAM.match(header, pos)) is not None:
            value = param.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params.setdefault(param.group(1).lower(), value)
            pos = param.end()
        if not params and (t68 := _TOKEN68.match(header, pos)) is not None:
            token68, pos = t68.group(1), t68.end()
        challenges.append(Challenge(scheme.group(1).lower(), params, token68))
    return challenges


# -- credentials ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = field(repr=False)


def registry_key(text: str) -> str:
    """A docker config `auths` key ("host", "host:port", "https://host/v1/") -> "host[:port]", lower case."""
    text = text.strip()
    if "://" in text:
        text = urlsplit(text).netloc
    return text.split("/", 1)[0].lower()


def load_credentials(path: str) -> dict[str, Credentials]:
    """A docker config.json (as `docker login` / `skopeo login --authfile` write it):
    {"auths": {"registry.example:443": {"auth": base64("user:password")}}}, or "username" and
    "password" in place of "auth". Credential helpers (credsStore, credHelpers) are not run."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise CredentialsError(f"cannot read registry credentials {path}: {err.strerror or err}") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise CredentialsError(f"registry credentials {path} is not JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("auths"), dict):
        helpers = isinstance(data, dict) and (data.get("credsStore") or data.get("credHelpers"))
        hint = " (credential helpers are not run: put the entries in auths)" if helpers else ""
        raise CredentialsError(f"registry credentials {path}: expected a docker config.json with an "
                               f"'auths' mapping{hint}")
    result: dict[str, Credentials] = {}
    for key, entry in data["auths"].items():
        where = f"registry credentials {path}: auths[{key!r}]"
        if not isinstance(entry, dict):
            raise CredentialsError(f"{where}: expected a mapping with 'auth' or 'username' and 'password'")
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(str(entry["auth"]), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise CredentialsError(f"{where}.auth: not base64 of 'user:password'") from None
            username, sep, password = decoded.partition(":")
            if not sep or not username:
                raise CredentialsError(f"{where}.auth: decodes to no 'user:password'")
        elif isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str) and entry["username"]:
            username, password = entry["username"], entry["password"]
        else:
            raise CredentialsError(f"{where}: needs 'auth' (base64 of user:password) or 'username' and 'password'")
        result[registry_key(key)] = Credentials(username, password)
    return result


# -- the authenticator ---------------------------------------------------------------------------

def _may_carry_secrets(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def canary_scopes(check: ProbeCheck) -> list[str]:
    """What a round of this check needs: pull on the read canaries' repositories, pull,push on the
    write canary's."""
    scopes = []
    for reference in (check.canary_manifest, check.canary_blob):
        if reference:
            repo = reference.partition("@")[0] if "@" in reference else reference.rpartition(":")[0]
            if repo:
                scopes.append(f"repository:{repo}:pull")
    if check.write_canary:
        scopes.append(f"repository:{check.write_canary}:pull,push")
    return scopes


class RegistryAuth:
    """Credentials per registry host, tokens cached per (realm, service, scopes, user) until expiry,
    and per registry base URL the Authorization header that worked last (sent up front)."""

    def __init__(self, credentials: dict[str, Credentials], clock: Callable[[], float] = time.monotonic):
        self.credentials = credentials
        self.clock = clock
        self.tokens: dict[tuple, tuple[str, float]] = {}  # key -> (token, renew at)
        self.current: dict[tuple[str, str], tuple[str, float]] = {}  # (base, user) -> (header, renew at)
        self.tokens_fetched = 0

    def forget(self, base: str, username: str, header: str) -> None:
        if self.current.get((base, username), ("",))[0] == header:
            del self.current[(base, username)]
        if header.startswith("Bearer "):
            token = header[7:]
            for key in [k for k, (t, _) in self.tokens.items() if t == token]:
                del self.tokens[key]

    @classmethod
    def from_file(cls, path: str) -> RegistryAuth:
        return cls(load_credentials(path))

    def credentials_for(self, check: ProbeCheck) -> tuple[str, Credentials] | None:
        """(key, credentials) for the check's registry: its Host header (with and without the port),
        then its address."""
        names = []
        if check.host_header:
            host = check.host_header.lower()
            has_port = host.rpartition("]")[2].count(":") == 1 if host.startswith("[") else ":" in host
            names += [host] if has_port else [f"{host}:{check.port}", host]
        address = f"[{check.address}]" if ":" in check.address else check.address
        names += [f"{address}:{check.port}".lower(), address.lower()]
        for name in names:
            if name in self.credentials:
                return name, self.credentials[name]
        return None

    def for_check(self, check: ProbeCheck, base: str, ssl: object) -> CheckAuth | None:
        found = self.credentials_for(check)
        if found is None:
            return None
        return CheckAuth(self, check, base, ssl, found[0], found[1])


class CheckAuth:
    """One check's use of the authenticator (made per round; the caches live in RegistryAuth)."""

    def __init__(self, auth: RegistryAuth, check: ProbeCheck, base: str, ssl: object, key: str,
                 credentials: Credentials):
        self.auth, self.check, self.base, self.ssl = auth, check, base, ssl
        self.key, self.credentials = key, credentials

    @property
    def who(self) -> str:
        return f"user {self.credentials.username!r} (credentials for {self.key})"

    def header(self) -> str | None:
        """The Authorization header that worked last for this registry, while still valid."""
        current = self.auth.current.get((self.base, self.credentials.username))
        if current is None or current[1] <= self.auth.clock():
            return None
        return current[0]

    async def answer(self, www_authenticate: str, session: aiohttp.ClientSession, sent: str | None = None) -> str:
        """The Authorization header that answers this 401's challenge. Raises AuthError. `sent`: the
        header the refused request carried; a token the registry refused is never offered again."""
        if sent is not None:
            self.auth.forget(self.base, self.credentials.username, sent)
        challenges = {c.scheme: c for c in parse_challenges(www_authenticate or "")}
        if "bearer" in challenges and challenges["bearer"].params.get("realm"):
            token, renew_at = await self._token(challenges["bearer"], session)
            header = f"Bearer {token}"
        elif "basic" in challenges:
            if not _may_carry_secrets(self.base):
                raise AuthError(f"refusing to send the password for {self.key} over plain http to {self.base}")
            header, renew_at = self._basic(), float("inf")
        else:
            shown = " ".join((www_authenticate or "none").split())[:80]
            raise AuthError(f"401 with no usable challenge (WWW-Authenticate: {shown})")
        self.auth.current[(self.base, self.credentials.username)] = (header, renew_at)
        return header

    def _basic(self) -> str:
        pair = f"{self.credentials.username}:{self.credentials.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    async def _token(self, challenge: Challenge, session: aiohttp.ClientSession) -> tuple[str, float]:
        realm = challenge.params["realm"]
        if urlsplit(realm).scheme not in ("http", "https"):
            raise AuthError(f"token realm {realm!r} is not an http(s) URL")
        if not _may_carry_secrets(realm):
            raise AuthError(f"refusing to send the password for {self.key} over plain http to realm {realm}")
        scopes = list(dict.fromkeys([s for s in challenge.params.get("scope", "").split(" ") if s]
                                    + canary_scopes(self.check)))
        service = challenge.params.get("service")
        key = (realm, service, tuple(sorted(scopes)), self.credentials.username)
        cached = self.auth.tokens.get(key)
        now = self.auth.clock()
        if cached is not None and cached[1] > now:
            return cached
        params = [("service", service)] if service else []
        params += [("scope", s) for s in scopes]
        try:
            async with session.get(realm, params=params, headers={"Authorization": self._basic()},
                                   allow_redirects=False, ssl=self.ssl, proxy=None) as resp:
                body = await resp.content.read(MAX_TOKEN_RESPONSE + 1)
                status = resp.status
        except (aiohttp.ClientError, OSError) as err:
            raise AuthError(f"token request to {realm} failed: {type(err).__name__}: {err}") from None
        if status in (401, 403):
            raise AuthError(f"token realm {realm} refused {self.who}: HTTP {status}")
        if status != 200:
            raise AuthError(f"token request to {realm} answered HTTP {status}")
        try:
            if len(body) > MAX_TOKEN_RESPONSE:
                raise ValueError("too big")
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
            if not isinstance(token, str) or not token:
                raise ValueError("no token")
            expires_in = doc.get("expires_in", DEFAULT_EXPIRES_IN)
            if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) or expires_in <= 0:
                expires_in = DEFAULT_EXPIRES_IN
        except (ValueError, AttributeError, UnicodeDecodeError) as err:
            raise AuthError(f"token realm {realm} sent no usable token ({err})") from None
        renew_at = now + float(expires_in) * (1 - EXPIRY_MARGIN)
        if len(self.auth.tokens) >= MAX_CACHED_TOKENS:
            self.auth.tokens.clear()
        self.auth.tokens[key] = (token, renew_at)
        self.auth.tokens_fetched += 1
        return token, renew_at
