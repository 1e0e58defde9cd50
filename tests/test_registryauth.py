"""oci checks against registries that require authentication: challenge parsing, the credentials file,
and the token flow against real processes: the stand-in in token mode (`geotm-backend serve
--token-auth`) and Debian's docker-registry with htpasswd (Basic) auth; a real `probes serve` whose
verdicts follow."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dnsd.model import ProbeCheck
from probes.checks import make_session, run_check
from probes.registryauth import (Challenge, Credentials, CredentialsError, RegistryAuth, load_credentials,
                                 parse_challenges)
from tests import harness
from tests.tools import require_tool

USER, PASSWORD = "prober", "s3cret:with colon"


# -- challenges -----------------------------------------------------------------------------------

CHALLENGES = [
    ("bearer-full", 'Bearer realm="https://auth.test/token",service="registry.test",scope="repository:a/b:pull,push"',
     [Challenge("bearer", {"realm": "https://auth.test/token", "service": "registry.test",
                           "scope": "repository:a/b:pull,push"})]),
    ("basic", 'Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
    ("two-challenges", 'Bearer realm="x", Basic realm="y"',
     [Challenge("bearer", {"realm": "x"}), Challenge("basic", {"realm": "y"})]),
    ("two-no-space", "Bearer realm=x,Basic realm=y", [Challenge("bearer", {"realm": "x"}),
                                                     Challenge("basic", {"realm": "y"})]),
    ("case-and-spaces", 'bearer REALM = x ,  error="insufficient_scope"',
     [Challenge("bearer", {"realm": "x", "error": "insufficient_scope"})]),
    ("escaped-quote-and-comma", r'Bearer realm="a\"b, c"', [Challenge("bearer", {"realm": 'a"b, c'})]),
    ("token68-then-params", "Negotiate abc==, Basic realm=y",
     [Challenge("negotiate", {}, "abc=="), Challenge("basic", {"realm": "y"})]),
    ("first-param-wins", 'Bearer realm="a",realm="b"', [Challenge("bearer", {"realm": "a"})]),
    ("scheme-only", "Bearer", [Challenge("bearer", {})]),
    ("empty", "", []),
    ("unterminated-quote", 'Bearer realm="https://auth', [Challenge("bearer", {})]),
    ("garbage", '"" ,,', []),
]


@pytest.mark.parametrize("header,expected", [c[1:] for c in CHALLENGES], ids=[c[0] for c in CHALLENGES])
def test_parse_challenges(header: str, expected: list[Challenge]) -> None:
    assert parse_challenges(header) == expected


# -- credentials file -----------------------------------------------------------------------------

def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


CREDENTIAL_FILES = [
    ("auth-field", {"auths": {"registry.test:5000": {"auth": _b64("u:p:w")}}},
     {"registry.test:5000": Credentials("u", "p:w")}),
    ("username-password", {"auths": {"Registry.Test": {"username": "u", "password": "p"}}},
     {"registry.test": Credentials("u", "p")}),
    ("url-key", {"auths": {"https://index.docker.io/v1/": {"auth": _b64("u:p")}}},
     {"index.docker.io": Credentials("u", "p")}),
]


@pytest.mark.parametrize("data,expected", [c[1:] for c in CREDENTIAL_FILES], ids=[c[0] for c in CREDENTIAL_FILES])
def test_load_credentials(tmp_path: Path, data: dict, expected: dict) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    assert load_credentials(str(path)) == expected


BAD_CREDENTIAL_FILES = [
    ("not-json", "{auths", "is not JSON"),
    ("no-auths", json.dumps({"credsStore": "desktop"}), "credential helpers are not run"),
    ("bad-base64", json.dumps({"auths": {"r": {"auth": "%%%"}}}), "auths['r'].auth: not base64"),
    ("no-colon", json.dumps({"auths": {"r": {"auth": _b64("justuser")}}}), "decodes to no 'user:password'"),
    ("empty-entry", json.dumps({"auths": {"r": {}}}), "needs 'auth' (base64 of user:password)"),
]


@pytest.mark.parametrize("text,message", [c[1:] for c in BAD_CREDENTIAL_FILES], ids=[c[0] for c in BAD_CREDENTIAL_FILES])
def test_bad_credentials_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(CredentialsError, match=r"registry credentials .*config\.json") as caught:
        load_credentials(str(path))
    assert message in str(caught.value)


MATCHES = [
    # id, credential keys, check fields, key used (None: no credentials)
    ("host-header-with-check-port", ["registry.test:5000"], dict(host_header="registry.test", port=5000),
     "registry.test:5000"),
    ("host-header-without-port", ["registry.test"], dict(host_header="registry.test", port=5000), "registry.test"),
    ("host-header-own-port", ["registry.test:443"], dict(host_header="registry.test:443", port=5000),
     "registry.test:443"),
    ("ipv6-host-header-without-port", ["[::1]:5000"], dict(host_header="[::1]", port=5000), "[::1]:5000"),
    ("ipv6-host-header-own-port", ["[::1]:443"], dict(host_header="[::1]:443", port=5000), "[::1]:443"),
    ("address-port", ["127.0.0.9:5000"], dict(port=5000), "127.0.0.9:5000"),
    ("ipv6-address", ["[::1]:5000"], dict(address="::1", port=5000), "[::1]:5000"),
    ("other-host", ["elsewhere.test"], dict(host_header="registry.test", port=5000), None),
]


@pytest.mark.parametrize("keys,fields,used", [c[1:] for c in MATCHES], ids=[c[0] for c in MATCHES])
def test_credentials_are_picked_by_registry_host(keys: list[str], fields: dict, used: str | None) -> None:
    auth = RegistryAuth({key: Credentials("u", "p") for key in keys})
    check = ProbeCheck(**{"kind": "oci", "address": "127.0.0.9", "scheme": "http", **fields})
    found = auth.credentials_for(check)
    assert (found[0] if found else None) == used


# -- the stand-in in token mode (a real process) --------------------------------------------------

def _http_json(url: str) -> object:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=1) as resp:
        return json.loads(resp.read())


def _credentials_file(directory: Path, host: str, user: str = USER, password: str = PASSWORD) -> str:
    path = directory / f"auth-{hashlib.sha256(f'{host}{user}{password}'.encode()).hexdigest()[:8]}.json"
    path.write_text(json.dumps({"auths": {host: {"auth": _b64(f"{user}:{password}")}}}))
    return str(path)


TOKEN_TTL = 1.5


@pytest.fixture(scope="module")
def token_standin(tmp_path_factory: pytest.TempPathFactory):
    """geotm-backend in token mode for contoso/eastus; yields (port, control port, work dir). A canary
    blob is pushed with a token fetched by hand, as a registry client would."""
    work = tmp_path_factory.mktemp("token-standin")
    users = work / "users"
    users.write_text(f"# stand-in users\n{USER}:{PASSWORD}\n")
    port, control = harness.free_port(), harness.free_port()
    argv = [sys.executable, "-m", "standin.cli", "serve", "--target", f"contoso/eastus=127.0.0.1:{port}",
            "--control", f"127.0.0.1:{control}", "--token-auth", str(users), "--token-ttl", str(TOKEN_TTL),
            "--log-format", "json"]
    ready = lambda: _http_json(f"http://127.0.0.1:{control}/healthz") == {"ok": True}  # noqa: E731
    with harness.ServiceProcess(argv, ready, "geotm-backend", cwd=harness.REPO_ROOT, timeout=15) as proc:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/token?service=geotm-backend&scope=repository:canary/read:pull,push",
            headers={"Authorization": "Basic " + _b64(f"{USER}:{PASSWORD}")})
        token = json.loads(opener.open(request, timeout=2).read())["token"]
        push = urllib.request.Request(f"http://127.0.0.1:{port}/v2/canary/read/blobs/uploads/?digest={BLOB_DIGEST}",
                                      data=BLOB, method="POST", headers={"Authorization": f"Bearer {token}"})
        assert opener.open(push, timeout=2).status == 201
        yield port, control, work, proc


BLOB = b"geotm canary blob\n"
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()

TOKEN_CASES = [
    # id, credentials (None, "right", "wrong", "other-host"), check fields, ok, reason fragment
    ("no-credentials-v2-alive", None, {}, True, "HTTP 401 (auth required: alive)"),
    ("no-credentials-canary-fails", None, dict(write_canary="canary/write"), False, "write canary: POST returned 401"),
    ("other-host-credentials-alive", "other-host", {}, True, "HTTP 401 (auth required: alive)"),
    ("right-v2", "right", {}, True, "HTTP 200"),
    ("right-canaries", "right", dict(canary_blob=f"canary/read@{BLOB_DIGEST}", write_canary="canary/write"),
     True, "HTTP 200, canary blob+write ok"),
    ("wrong-password-fails", "wrong", {}, False, f"token realm http://127.0.0.1:PORT/token refused user '{USER}'"),
    ("wrong-password-not-alive", "wrong", {}, False, "authentication failed for http://127.0.0.1:PORT/v2/"),
]


def _auth_for(kind: str | None, work: Path, port: int) -> RegistryAuth | None:
    if kind is None:
        return None
    host = {"right": f"127.0.0.1:{port}", "wrong": f"127.0.0.1:{port}", "other-host": "elsewhere.test"}[kind]
    password = "not the password" if kind == "wrong" else PASSWORD
    return RegistryAuth.from_file(_credentials_file(work, host, password=password))


@pytest.mark.parametrize("credentials,fields,ok,reason", [c[1:] for c in TOKEN_CASES], ids=[c[0] for c in TOKEN_CASES])
def test_token_flow_against_the_standin(token_standin, credentials, fields, ok, reason) -> None:
    port, _control, work, _proc = token_standin
    auth = _auth_for(credentials, work, port)
    check = ProbeCheck(kind="oci", address="127.0.0.1", port=port, scheme="http", **fields)

    async def run():
        async with make_session() as session:
            return await run_check(check, session, 3, auth)

    result = asyncio.run(run())
    assert result.ok is ok, result
    assert reason.replace("PORT", str(port)) in result.reason, result


@pytest.mark.slow  # waits out the tokens' lifetime
def test_tokens_are_cached_until_they_expire(token_standin) -> None:
    port, control, work, _proc = token_standin
    auth = _auth_for("right", work, port)
    check = ProbeCheck(kind="oci", address="127.0.0.1", port=port, scheme="http",
                       canary_blob=f"canary/read@{BLOB_DIGEST}", write_canary="canary/write")

    def issued() -> int:
        return next(r["tokens_issued"] for r in _http_json(f"http://127.0.0.1:{control}/replicas")["replicas"])

    async def rounds(n: int) -> list:
        async with make_session() as session:
            return [await run_check(check, session, 3, auth) for _ in range(n)]

    before = issued()
    results = asyncio.run(rounds(3))
    assert all(r.ok for r in results), results
    # one token for /v2/ + the canaries (pull,push asked up front), one more for the DELETE's scope
    first = issued() - before
    assert first == auth.tokens_fetched == 2
    time.sleep(TOKEN_TTL + 0.2)  # every token expired on both sides: fetched anew, not refused
    results = asyncio.run(rounds(2))
    assert all(r.ok for r in results), results
    assert issued() - before == auth.tokens_fetched == 4


def test_a_token_the_registry_refuses_is_fetched_anew(token_standin) -> None:
    """Client and registry disagree on expiry (clock jumps, a restarted token service): the refused
    token is dropped and a new one fetched in the same round."""
    port, _control, work, _proc = token_standin
    auth = _auth_for("right", work, port)
    check = ProbeCheck(kind="oci", address="127.0.0.1", port=port, scheme="http")

    async def run():
        async with make_session() as session:
            return await run_check(check, session, 3, auth)

    assert asyncio.run(run()).ok
    base = f"http://127.0.0.1:{port}"
    for key in auth.tokens:  # as far as the client knows, its token is good for ever
        auth.tokens[key] = ("forged-or-expired", float("inf"))
    auth.current[(base, USER)] = ("Bearer forged-or-expired", float("inf"))
    result = asyncio.run(run())
    assert result.ok and result.reason == "HTTP 200", result
    assert auth.current[(base, USER)][0] != "Bearer forged-or-expired"


def test_credentials_never_go_to_a_plain_http_realm_beyond_loopback() -> None:
    from probes.registryauth import CheckAuth

    auth = RegistryAuth({"127.0.0.1:1": Credentials(USER, PASSWORD)})
    check = ProbeCheck(kind="oci", address="127.0.0.1", port=1, scheme="http")
    check_auth = auth.for_check(check, "http://127.0.0.1:1", True)
    assert isinstance(check_auth, CheckAuth)

    async def answer(header: str):
        async with make_session() as session:
            return await check_auth.answer(header, session)

    from probes.registryauth import AuthError
    with pytest.raises(AuthError, match="refusing to send the password .* to realm http://192.0.2.1/token"):
        asyncio.run(answer('Bearer realm="http://192.0.2.1/token",service="x"'))
    remote = auth.for_check(ProbeCheck(kind="oci", address="192.0.2.1", port=1, scheme="http"), "http://192.0.2.1:1", True)
    assert remote is None  # no credentials for that host at all
    auth.credentials["192.0.2.1:1"] = Credentials(USER, PASSWORD)
    remote = auth.for_check(ProbeCheck(kind="oci", address="192.0.2.1", port=1, scheme="http"), "http://192.0.2.1:1", True)

    async def basic():
        async with make_session() as session:
            return await remote.answer('Basic realm="r"', session)

    with pytest.raises(AuthError, match="over plain http to http://192.0.2.1:1"):
        asyncio.run(basic())


# -- a real probes process against the stand-in in token mode ------------------------------------

PROBES_CONFIG = """
zone:
  name: azurecr.test
  soa: {{mname: ns1, rname: hostmaster, serial: 1}}
  nameservers: [ns1]
  records: [{{name: ns1, type: A, value: 127.0.0.1}}]
regions: [eastus]
clients: {{default_region: eastus}}
registries:
  contoso:
    replicas:
      eastus:
        addresses: [127.0.0.1]
        probe: {{kind: oci, address: 127.0.0.1, port: {port}, scheme: http, write_canary: canary/write,
                 interval: 200ms, timeout: 150ms, fall: 1, rise: 1}}
probes:
  listen: 127.0.0.1:{probes_port}
  registry_credentials: {credentials}
"""


@pytest.mark.parametrize("password,status,reason", [
    (PASSWORD, "online", "canary write ok"),
    ("wrong", "degraded", "authentication failed"),
], ids=["right-credentials-online", "wrong-credentials-degraded"])
def test_probes_process_authenticates_with_the_credentials_file(token_standin, password, status, reason) -> None:
    port, _control, work, _proc = token_standin
    probes_port = harness.free_port()
    config = work / f"probes-{status}.yaml"
    config.write_text(PROBES_CONFIG.format(port=port, probes_port=probes_port, credentials=_credentials_file(
        work, f"127.0.0.1:{port}", password=password)))
    url = f"http://127.0.0.1:{probes_port}/v1/health"

    def verdict():
        endpoints = _http_json(url)["endpoints"]
        return next(e for e in endpoints if e["replica"] == "eastus")

    argv = [sys.executable, "-m", "probes.cli", "serve", "--config", str(config), "--log-format", "json"]
    with harness.ServiceProcess(argv, lambda: _http_json(f"http://127.0.0.1:{probes_port}/healthz")["ok"],
                                "probes", cwd=harness.REPO_ROOT):
        deadline = time.monotonic() + 10
        while verdict()["status"] == "checking" and time.monotonic() < deadline:
            time.sleep(0.1)
        got = verdict()
    assert got["status"] == status and reason in got["reason"], got


# -- Debian's docker-registry with htpasswd (Basic) auth ------------------------------------------

@pytest.fixture(scope="module")
def htpasswd_registry(tmp_path_factory: pytest.TempPathFactory):
    registry = require_tool("docker-registry", "for a real registry with Basic auth")
    require_tool("htpasswd", "to write the registry's bcrypt password file", package="apache2-utils")
    work = tmp_path_factory.mktemp("htpasswd-registry")
    subprocess.run(["htpasswd", "-B", "-b", "-c", str(work / "htpasswd"), USER, PASSWORD], check=True,
                   capture_output=True, timeout=30)
    port = harness.free_port()
    (work / "config.yml").write_text(json.dumps({  # JSON is YAML
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(work / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "geotm-test"},
        "auth": {"htpasswd": {"realm": "geotm-test", "path": str(work / "htpasswd")}},
    }))

    def ready() -> bool:
        try:
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"http://127.0.0.1:{port}/v2/", timeout=1)
        except urllib.error.HTTPError as err:
            return err.code == 401
        return False

    with harness.ServiceProcess([registry, "serve", str(work / "config.yml")], ready, "docker-registry",
                                timeout=20):
        yield port, work


HTPASSWD_CASES = [
    ("no-credentials-alive", None, {}, True, "HTTP 401 (auth required: alive)"),
    ("no-credentials-canary-fails", None, dict(write_canary="canary/write"), False, "write canary: POST returned 401"),
    ("right-with-write-canary", PASSWORD, dict(write_canary="canary/write"), True, "HTTP 200, canary write ok"),
    ("wrong-password-fails", "wrong", {}, False, f"authentication failed: HTTP 401 from http://127.0.0.1:PORT/v2/ "
                                                 f"for user '{USER}'"),
]


@pytest.mark.parametrize("password,fields,ok,reason", [c[1:] for c in HTPASSWD_CASES], ids=[c[0] for c in HTPASSWD_CASES])
def test_basic_auth_against_docker_registry(htpasswd_registry, password, fields, ok, reason) -> None:
    port, work = htpasswd_registry
    auth = (RegistryAuth.from_file(_credentials_file(work, f"127.0.0.1:{port}", password=password))
            if password is not None else None)
    check = ProbeCheck(kind="oci", address="127.0.0.1", port=port, scheme="http", **fields)

    async def run():
        async with make_session() as session:
            return await run_check(check, session, 5, auth)

    result = asyncio.run(run())
    assert result.ok is ok, result
    assert reason.replace("PORT", str(port)) in result.reason, result
