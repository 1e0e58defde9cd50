"""Trust between the services, with real processes on loopback: `probes serve` over TLS with a bearer
token, a real dnsd polling it (right token and CA: health applied; wrong token, no token, wrong CA:
the poll fails, logged, and never counts as data), the probes API's access policy, and signed webhooks
verified by a real receiver."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import pytest
import yaml
from aiohttp import web

from drills.pki import make_ca, make_server_cert
from probes.webhook import SIGNATURE_HEADER, verify_signature
from tests import harness
from tests.dnstest import example_dict, probed_example

TOKEN = "probes-token-0123456789abcdef"
WEBHOOK_SECRET = "webhook-secret-fedcba9876543210"
POLL, TTL = 0.2, 30.0


# -- fixtures: PKI, a webhook receiver, one probes process ----------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Our CA with a certificate for 127.0.0.1, and a rogue CA (the wrong trust anchor)."""
    d = tmp_path_factory.mktemp("trust-pki")
    ca = make_ca(d / "ca")
    cert = make_server_cert(d / "ca", "probes", ca, ("probes.test",), ("127.0.0.1",))
    rogue = make_ca(d / "rogue")
    rogue_cert = make_server_cert(d / "rogue", "forged", rogue, ("probes.test",), ("127.0.0.1",))
    files = {"ca": ca[0], "cert": cert.cert, "key": cert.key, "rogue_ca": rogue[0],
             "rogue_cert": rogue_cert.cert, "rogue_key": rogue_cert.key}
    for name, text in (("token", TOKEN + "\n"), ("wrong_token", "not-the-token\n"), ("secret", WEBHOOK_SECRET)):
        (d / name).write_text(text)
        files[name] = d / name
    return files


class Receiver:
    """A real HTTP server (aiohttp, in a thread of its own) that keeps every POST's headers and raw body."""

    def __init__(self):
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.loop = asyncio.new_event_loop()
        self.port = harness.free_port()
        started = threading.Event()

        async def handle(request: web.Request) -> web.Response:
            self.received.append((dict(request.headers), await request.read()))
            return web.Response(status=204)

        async def start():
            app = web.Application()
            app.router.add_post("/hook", handle)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
            started.set()

        self.thread = threading.Thread(target=lambda: (self.loop.run_until_complete(start()), self.loop.run_forever()),
                                       daemon=True)
        self.thread.start()
        assert started.wait(10)

    def close(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def receiver():
    hook = Receiver()
    yield hook
    hook.close()


def _get(url: str, token: str | None = None, context: ssl.SSLContext | None = None, method: str = "GET"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers, method=method, data=b"{}" if method == "POST" else None)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(request, timeout=2) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@pytest.fixture(scope="module")
def probes(pki, receiver, tmp_path_factory):
    """One `probes serve`: TLS, a token on /v1/health, /metrics not public, a signed webhook."""
    work = tmp_path_factory.mktemp("trust-probes")
    port = harness.free_port()
    config = probed_example(work / "probes.yaml", port, {}, poll=POLL, ttl=TTL, probes={
        "tls": {"cert_file": str(pki["cert"]), "key_file": str(pki["key"])}, "token_file": str(pki["token"]),
        "public_metrics": False,
        "webhook": {"url": f"http://127.0.0.1:{receiver.port}/hook", "secret_file": str(pki["secret"])}})
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    argv = [harness.sys.executable, "-m", "probes.cli", "serve", "--config", str(config), "--log-format", "json"]
    ready = lambda: _get(f"https://127.0.0.1:{port}/healthz", context=context)[0] == 200  # noqa: E731
    with harness.ServiceProcess(argv, ready, "probes", cwd=harness.REPO_ROOT) as proc:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and b'"degraded"' not in _get(
                f"https://127.0.0.1:{port}/v1/health", TOKEN, context)[2]:
            time.sleep(0.1)
        yield port, context, proc


# -- the probes API --------------------------------------------------------------------------------

API_CASES = [
    # id, method, path, token, status
    ("health-no-token", "GET", "/v1/health", None, 401),
    ("health-wrong-token", "GET", "/v1/health", "not-the-token", 401),
    ("health-token-prefix", "GET", "/v1/health", TOKEN[:-1], 401),
    ("health-right-token", "GET", "/v1/health", TOKEN, 200),
    ("post-health-no-token", "POST", "/v1/health", None, 401),
    ("post-health-right-token", "POST", "/v1/health", TOKEN, 405),
    ("healthz-open", "GET", "/healthz", None, 200),
    ("metrics-no-token", "GET", "/metrics", None, 401),
    ("metrics-right-token", "GET", "/metrics", TOKEN, 200),
]


@pytest.mark.parametrize("method,path,token,status", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_probes_api_access(probes, method, path, token, status) -> None:
    port, context, _proc = probes
    got, headers, body = _get(f"https://127.0.0.1:{port}{path}", token, context, method)
    assert got == status, body
    if status == 401:
        assert headers.get("WWW-Authenticate") == 'Bearer realm="geotm-probes"'
        assert b"contoso" not in body  # no verdict leaks with a refusal


def test_probes_refusals_are_logged_rate_limited(probes) -> None:
    port, context, proc = probes
    before = proc.log_text().count('"probes_request_refused"')
    for _ in range(20):
        assert _get(f"https://127.0.0.1:{port}/v1/health", "wrong", context)[0] == 401
    assert proc.log_text().count('"probes_request_refused"') - before <= 2  # 1 per 10 s window


@pytest.mark.parametrize("url,trust", [
    ("http://127.0.0.1:{port}/v1/health", None),  # plain http to the TLS port
    ("https://127.0.0.1:{port}/v1/health", "rogue_ca"),  # a client trusting another CA
], ids=["plain-http", "untrusted-ca"])
def test_probes_serves_only_verified_tls(probes, pki, url, trust) -> None:
    port, _context, _proc = probes
    context = ssl.create_default_context(cafile=str(pki[trust])) if trust else None
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=context))
        opener.open(urllib.request.Request(url.format(port=port), headers={"Authorization": f"Bearer {TOKEN}"}),
                    timeout=2).read()


# -- dnsd polling it -------------------------------------------------------------------------------

FEED_CASES = [
    # id, feed settings ({ca}, {token}, {port} filled in), eastus degraded in dnsd, feed error, log event
    ("right-token-and-ca", {"feeds": [{"url": "https://127.0.0.1:{port}/v1/health", "ca_file": "{ca}",
                                       "token_file": "{token}"}]}, True, None, None),
    ("settings-for-all-feeds", {"feeds": ["https://127.0.0.1:{port}/v1/health"], "ca_file": "{ca}",
                                "token_file": "{token}"}, True, None, None),
    ("wrong-token", {"feeds": ["https://127.0.0.1:{port}/v1/health"], "ca_file": "{ca}", "token_file": "{wrong_token}"},
     False, "HTTP 401: probes refused our token", "health_feed_unauthorized"),
    ("no-token", {"feeds": ["https://127.0.0.1:{port}/v1/health"], "ca_file": "{ca}"},
     False, "HTTP 401: probes refused a request without a token", "health_feed_unauthorized"),
    ("wrong-ca", {"feeds": ["https://127.0.0.1:{port}/v1/health"], "ca_file": "{rogue_ca}", "token_file": "{token}"},
     False, "TLS certificate of https://127.0.0.1:{port}/v1/health not trusted", "health_feed_error"),
    ("system-cas-only", {"feeds": ["https://127.0.0.1:{port}/v1/health"], "token_file": "{token}"},
     False, "not trusted", "health_feed_error"),
    ("unreadable-token-file", {"feeds": ["https://127.0.0.1:{port}/v1/health"], "ca_file": "{ca}",
                               "token_file": "/nonexistent/token"},
     False, "cannot read health feed token file /nonexistent/token", "health_feed_error"),
]


def _fill(value, mapping: dict[str, str]):
    if isinstance(value, dict):
        return {k: _fill(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, mapping) for v in value]
    return value.format(**mapping) if isinstance(value, str) else value


def _status(admin_port: int) -> dict:
    return json.loads(_get(f"http://127.0.0.1:{admin_port}/v1/status")[2])


def _eastus(status: dict) -> dict:
    contoso = next(r for r in status["registries"] if r["name"] == "contoso")
    return next(r for r in contoso["replicas"] if r["name"] == "eastus")


def _tm_target(dns_port: int) -> str:
    reply = dns.query.udp(dns.message.make_query("contoso.tm.azurecr.test", "A"), "127.0.0.1", port=dns_port,
                          timeout=2)
    return str(reply.answer[0][0].target)


# each refusal waits out 10 feed polls: one of them in the fast suite, the others slow
FAST_FEED_CASES = {"right-token-and-ca", "settings-for-all-feeds", "wrong-token"}


@pytest.mark.parametrize("health,applied,error,event", [
    pytest.param(*c[1:], id=c[0], marks=() if c[0] in FAST_FEED_CASES else pytest.mark.slow) for c in FEED_CASES])
def test_dnsd_applies_only_an_authenticated_verified_feed(probes, pki, tmp_path, health, applied, error, event) -> None:
    port, _context, _probes_proc = probes
    mapping = {"port": str(port), **{k: str(v) for k, v in pki.items()}}
    config = probed_example(tmp_path / "dnsd.yaml", port, _fill(health, mapping), poll=POLL, ttl=TTL)
    with harness.dnsd(config) as dnsd:
        deadline = time.monotonic() + 10
        status = _status(dnsd.admin_port)
        feed = status["health"]["feeds"][0]
        while time.monotonic() < deadline and not (_eastus(status)["status"] == "degraded" or feed["error"]):
            time.sleep(0.1)
            status = _status(dnsd.admin_port)
            feed = status["health"]["feeds"][0]
        if not applied:
            time.sleep(10 * POLL)  # probes has said "degraded" all along: give dnsd many polls to (wrongly) hear it
            status = _status(dnsd.admin_port)
            feed = status["health"]["feeds"][0]
        eastus, target = _eastus(status), _tm_target(dnsd.port)
        log = dnsd.log_text()
    assert (eastus["status"] == "degraded") is applied, (eastus, feed)
    assert (target == "contoso.eastus.reg.azurecr.test.") is not applied, target
    if applied:
        assert feed["error"] is None
        return
    assert error.format(port=port) in feed["error"], feed
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    ours = [e for e in events if e["event"] == event]
    assert len(ours) == 1, ours  # logged once though every poll of 10+ failed: rate-limited
    assert error.format(port=port) in ours[0]["error"]


# -- signed webhooks -------------------------------------------------------------------------------

def _receiver_side_check(secret: bytes, body: bytes, header: str) -> bool:
    """What the README tells receivers to do, written independently of probes.webhook."""
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


def test_webhooks_carry_a_signature_receivers_verify(probes, receiver) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(b'"degraded"' in body for _h, body in receiver.received):
        time.sleep(0.1)
    assert receiver.received, "no webhook arrived"
    for headers, body in receiver.received:
        header = headers[SIGNATURE_HEADER]
        assert header.startswith("sha256=") and len(header) == 7 + 64
        assert _receiver_side_check(WEBHOOK_SECRET.encode(), body, header)
        assert verify_signature(WEBHOOK_SECRET, body, header)
        assert json.loads(body)["event"] == "status_changed"
    assert any(json.loads(body)["replica"] == "eastus" and json.loads(body)["after"] == "degraded"
               for _h, body in receiver.received)


@pytest.mark.parametrize("tamper", ["body", "secret", "header"])
def test_a_forged_or_altered_webhook_fails_verification(probes, receiver, tamper) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not receiver.received:
        time.sleep(0.1)
    headers, body = receiver.received[0]
    header, secret = headers[SIGNATURE_HEADER], WEBHOOK_SECRET
    if tamper == "body":
        body = body.replace(b'"status_changed"', b'"status_changex"')
    elif tamper == "secret":
        secret = "guessed"
    else:
        header = "sha256=" + "0" * 64
    assert not verify_signature(secret, body, header)
    assert not _receiver_side_check(secret.encode(), body, header)


# -- the config keys -------------------------------------------------------------------------------

SETTINGS_CASES = [
    # id, probes section, health section, expected (dotted attribute -> value)
    ("defaults", {}, {"feeds": ["http://127.0.0.1:8053/v1/health"]},
     {"probes.tls_cert_file": None, "probes.token_file": None, "probes.public_metrics": True,
      "probes.registry_credentials": None, "health.access.ca_file": None, "health.access.token_file": None}),
    ("probes-all-keys", {"listen": "0.0.0.0:8053", "tls": {"cert_file": "/c.pem", "key_file": "/k.pem"},
                         "token_file": "/t", "public_metrics": False, "registry_credentials": "/auth.json",
                         "webhook": {"url": "https://h.test/x", "secret_file": "/s"}}, {},
     {"probes.tls_cert_file": "/c.pem", "probes.tls_key_file": "/k.pem", "probes.token_file": "/t",
      "probes.public_metrics": False, "probes.registry_credentials": "/auth.json", "probes.webhook.secret_file": "/s"}),
    ("feed-settings-for-all", {}, {"feeds": ["https://a.test/v1/health", "https://b.test/v1/health"],
                                   "ca_file": "/ca", "token_file": "/t"},
     {"health.access_for('https://b.test/v1/health').ca_file": "/ca",
      "health.access_for('https://b.test/v1/health').token_file": "/t"}),
    ("per-feed-overrides-one-value", {}, {"feeds": ["https://a.test/v1/health",
                                                    {"url": "https://b.test/v1/health", "token_file": "/tb"}],
                                          "ca_file": "/ca", "token_file": "/t"},
     {"health.access_for('https://a.test/v1/health').token_file": "/t",
      "health.access_for('https://b.test/v1/health').token_file": "/tb",
      "health.access_for('https://b.test/v1/health').ca_file": "/ca"}),
    ("token-on-loopback-http-is-fine", {}, {"feeds": ["http://127.0.0.1:8053/v1/health"], "token_file": "/t"},
     {"health.access.token_file": "/t"}),
]


@pytest.mark.parametrize("probes_section,health,expected", [c[1:] for c in SETTINGS_CASES],
                         ids=[c[0] for c in SETTINGS_CASES])
def test_trust_settings_build_the_model(probes_section, health, expected) -> None:
    from dnsd.config import parse_config_text
    data = example_dict()
    data["probes"], data["health"] = probes_section, health or data["health"]
    config = parse_config_text(yaml.safe_dump(data, sort_keys=False), "trust.yaml")
    for path, value in expected.items():
        assert _lookup(config, path) == value, path


def _lookup(config, path: str):
    """'probes.webhook.secret_file' or "health.access_for('URL').token_file" on the built config."""
    node = config
    for part in re.findall(r"access_for\('[^']*'\)|[a-z_]+", path):
        node = node.access_for(part[12:-2]) if part.startswith("access_for(") else getattr(node, part)
    return node


@pytest.mark.slow
def test_forged_feed_attack_script_shows_every_attack_refused() -> None:
    """bench/attacks/forged_feed.py: real probes, dnsd and an impostor feed server, all on loopback."""
    import subprocess
    result = subprocess.run([harness.sys.executable, str(harness.REPO_ROOT / "bench" / "attacks" / "forged_feed.py"),
                             "--guesses", "30", "--deadline", "20"], capture_output=True, text=True, timeout=180,
                            cwd=harness.REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert " APPLIED " in lines["unprotected"]  # the attack works against a plain feed...
    for name in ("impostor-tls", "impostor-plain", "post-document"):
        assert " REFUSED " in lines[name], result.stdout  # ...and not against TLS + token
    assert "carrying the token: 0" in lines["impostor-tls"]
    assert result.stdout.strip().endswith("7 passed, 0 failed")


STARTUP_CASES = [
    # id, probes settings (files from the pki fixture by name), message on stderr
    ("token-file-missing", {"token_file": "/nonexistent/token", "tls": "TLS"},
     "cannot read probes token /nonexistent/token: No such file or directory"),
    ("token-file-empty", {"token_file": "EMPTY", "tls": "TLS"}, "probes token EMPTY is empty"),
    ("tls-key-missing", {"tls": {"cert_file": "cert", "key_file": "/nonexistent/key"}}, "cannot load probes.tls"),
    ("tls-key-of-another-cert", {"tls": {"cert_file": "cert", "key_file": "rogue_key"}}, "cannot load probes.tls"),
    ("webhook-secret-missing", {"webhook": {"url": "http://127.0.0.1:9/x", "secret_file": "/nonexistent/secret"}},
     "cannot read webhook secret /nonexistent/secret"),
    ("registry-credentials-not-json", {"registry_credentials": "token"}, "is not JSON"),
]


# each starts probes (about 1 s): one token and one TLS refusal in the fast suite, the others slow
FAST_STARTUP_CASES = {"token-file-missing", "tls-key-missing"}


@pytest.mark.parametrize("settings,message", [
    pytest.param(*c[1:], id=c[0], marks=() if c[0] in FAST_STARTUP_CASES else pytest.mark.slow) for c in STARTUP_CASES])
def test_probes_refuses_to_start_without_usable_trust_files(pki, tmp_path, settings, message) -> None:
    import subprocess
    empty = tmp_path / "empty"
    empty.write_text("\n")
    names = {**{k: str(v) for k, v in pki.items()}, "EMPTY": str(empty)}
    tls = {"cert_file": names["cert"], "key_file": names["key"]}

    def resolve(value):
        if value == "TLS":
            return tls
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        return names.get(value, value)

    port = harness.free_port()
    config = probed_example(tmp_path / "probes.yaml", port, {}, resolve(settings), poll=POLL, ttl=TTL)
    result = subprocess.run([harness.sys.executable, "-m", "probes.cli", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=30, cwd=harness.REPO_ROOT)
    assert result.returncode == 1, result.stderr
    assert message.replace("EMPTY", str(empty)) in result.stderr, result.stderr
