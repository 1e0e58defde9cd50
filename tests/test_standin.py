"""The geotm-backend stand-in: its registry and health endpoints, each failure mode as probes.checks sees it, the control API, and the CLI (in process and as a real `python -m standin.cli serve` child)."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import structlog.testing

from dnsd.config import parse_config_text
from dnsd.model import ProbeCheck
from probes.checks import make_session, run_check
from standin import cli
from standin.app import Backend
from standin.targets import Target, make_targets, targets_from_config
from tests.tools import require_tool

try:
    from tests import harness
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    import harness

ADDR = "127.0.0.31"
OTHER = "127.0.0.32"

CONFIG = """
zone:
  name: azurecr.test
  soa: {{mname: ns1, rname: hostmaster, serial: 1, refresh: 3600, retry: 600, expire: 604800,
         negative_ttl: 60, ttl: 3600}}
  nameservers: [ns1]
  ns_ttl: 3600
  records:
    - {{name: ns1, type: A, ttl: 3600, value: 127.0.0.1}}
regions: [eastus, westeurope]
latency_ms:
  eastus: {{westeurope: 85}}
registries:
  contoso:
    routing: priority
    replicas:
      eastus:
        addresses: [{addr}]
        probe:
          checks:
            - {{kind: oci, scheme: http, port: {oci}, write_canary: geotm/canary}}
            - {{kind: distribution, port: {debug}}}
            - {{kind: tcp, port: {oci}}}
      westeurope:
        addresses: [{other}]
        probe: {{kind: harbor, scheme: https, port: {tls}}}
      unprobed:
        location: eastus
        addresses: [127.0.0.33]
"""


def ports(n: int, host: str = ADDR) -> list[int]:
    found: list[int] = []
    for _ in range(50):
        port = harness.free_port(host)
        if port not in found:
            found.append(port)
        if len(found) == n:
            return found
    raise RuntimeError("no free ports")


def checks_for(port: int, debug_port: int) -> dict[str, ProbeCheck]:
    return {
        "oci": ProbeCheck(kind="oci", address=ADDR, port=port, scheme="http", write_canary="geotm/canary"),
        "distribution": ProbeCheck(kind="distribution", address=ADDR, port=debug_port, scheme="http",
                                   path="/debug/health"),
        "harbor": ProbeCheck(kind="harbor", address=ADDR, port=port, scheme="http"),
        "tcp": ProbeCheck(kind="tcp", address=ADDR, port=port, scheme="http"),
    }


@contextlib.asynccontextmanager
async def backend_running(*targets: Target, ssl_context: ssl.SSLContext | None = None
                          ) -> AsyncIterator[tuple[Backend, str]]:
    backend = Backend(targets, ssl_context)
    await backend.start()
    try:
        host, port = await backend.start_control("127.0.0.1", 0)
        yield backend, f"http://{host}:{port}"
    finally:
        await backend.close()


@pytest.fixture
async def standin() -> AsyncIterator[tuple[Backend, str, dict[str, ProbeCheck], aiohttp.ClientSession]]:
    port, debug_port = ports(2)
    target = make_targets([("contoso", "eastus", [(ADDR, port), (ADDR, debug_port)])])[0]
    async with backend_running(target) as (backend, control), make_session() as session:
        yield backend, control, checks_for(port, debug_port), session


async def set_mode(session: aiohttp.ClientSession, control: str, mode: str, registry: str = "contoso",
                   replica: str = "eastus", **extra) -> tuple[int, dict]:
    async with session.post(f"{control}/replicas/{registry}/{replica}/mode", json={"mode": mode, **extra}) as resp:
        return resp.status, await resp.json()


# -- targets -------------------------------------------------------------------------------------

def test_targets_from_config() -> None:
    config = parse_config_text(CONFIG.format(addr=ADDR, other=OTHER, oci=15000, debug=15001, tls=15443))
    targets = targets_from_config(config)
    assert targets == [
        Target("contoso", "eastus", ((ADDR, 15000), (ADDR, 15001))),
        Target("contoso", "westeurope", ((OTHER, 15443),), frozenset({(OTHER, 15443)})),
    ]


@pytest.mark.parametrize("items,error", [
    ([("a", "x", [(ADDR, 1)]), ("b", "y", [(ADDR, 1)])], "claimed by both a/x and b/y"),
    ([("a", "x", [])], "a/x: no address"),
])
def test_make_targets_rejects(items, error) -> None:
    with pytest.raises(ValueError, match=error):
        make_targets(items)


def test_make_targets_dedups_listeners() -> None:
    assert make_targets([("a", "x", [(ADDR, 1), (ADDR, 2), (ADDR, 1)])])[0].listeners == ((ADDR, 1), (ADDR, 2))


# -- endpoints -----------------------------------------------------------------------------------

async def test_health_endpoints(standin) -> None:
    _backend, _control, checks, session = standin
    base = f"http://{ADDR}:{checks['oci'].port}"
    async with session.get(f"{base}/v2/") as resp:
        assert (resp.status, await resp.json()) == (200, {})
        assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    async with session.get(f"http://{ADDR}:{checks['distribution'].port}/debug/health") as resp:
        assert (resp.status, await resp.json()) == (200, {})
    async with session.get(f"{base}/api/v2.0/health") as resp:
        doc = await resp.json()
        assert doc["status"] == "healthy" and {c["name"] for c in doc["components"]} >= {"core", "registry"}


async def test_oci_blob_and_manifest_flow(standin) -> None:
    _backend, _control, checks, session = standin
    base = f"http://{ADDR}:{checks['oci'].port}"
    repo = "team/sub/app"
    data = b"layer bytes " * 100
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    # chunked upload: POST, PATCH, PUT ?digest=
    async with session.post(f"{base}/v2/{repo}/blobs/uploads/") as resp:
        assert resp.status == 202
        location = resp.headers["Location"]
    assert location.startswith(f"/v2/{repo}/blobs/uploads/")
    async with session.patch(base + location, data=data[:500]) as resp:
        assert resp.status == 202 and resp.headers["Range"] == "0-499"
    async with session.put(f"{base}{location}?digest=sha256:{'0' * 64}", data=data[500:]) as resp:
        assert resp.status == 400  # wrong digest: rejected, upload kept
    async with session.put(f"{base}{location}?digest={digest}", data=b"") as resp:
        assert resp.status == 201 and resp.headers["Docker-Content-Digest"] == digest
    async with session.head(f"{base}/v2/{repo}/blobs/{digest}") as resp:
        assert resp.status == 200 and resp.headers["Content-Length"] == str(len(data))
    async with session.get(f"{base}/v2/{repo}/blobs/{digest}") as resp:
        assert await resp.read() == data
    async with session.head(f"{base}/v2/other/blobs/{digest}") as resp:
        assert resp.status == 404  # blobs belong to a repository
    # monolithic upload
    small = b"config"
    small_digest = "sha256:" + hashlib.sha256(small).hexdigest()
    async with session.post(f"{base}/v2/{repo}/blobs/uploads/?digest={small_digest}", data=small) as resp:
        assert resp.status == 201
    # manifests by tag and digest
    manifest = json.dumps({"schemaVersion": 2, "layers": [{"digest": digest}]}).encode()
    mtype = "application/vnd.oci.image.manifest.v1+json"
    async with session.put(f"{base}/v2/{repo}/manifests/v1", data=manifest, headers={"Content-Type": mtype}) as resp:
        assert resp.status == 201
        mdigest = resp.headers["Docker-Content-Digest"]
    for ref in ("v1", mdigest):
        async with session.get(f"{base}/v2/{repo}/manifests/{ref}") as resp:
            assert (resp.status, resp.headers["Content-Type"], await resp.read()) == (200, mtype, manifest)
    async with session.head(f"{base}/v2/{repo}/manifests/v2") as resp:
        assert resp.status == 404
    # deletes and bad names
    async with session.delete(f"{base}/v2/{repo}/blobs/{digest}") as resp:
        assert resp.status == 202
    async with session.head(f"{base}/v2/{repo}/blobs/{digest}") as resp:
        assert resp.status == 404
    async with session.post(f"{base}/v2/Bad..Name/blobs/uploads/") as resp:
        assert resp.status == 400 and (await resp.json())["errors"][0]["code"] == "NAME_INVALID"


# -- modes through the control API ---------------------------------------------------------------

MODE_CASES = [
    # mode, extra, {check: (ok, reason substring)}
    ("healthy", {}, {"oci": (True, "canary write ok"), "distribution": (True, "HTTP 200"),
                     "harbor": (True, "healthy"), "tcp": (True, "connected")}),
    ("unhealthy", {"reason": "disk on fire"},
     {"oci": (False, "HTTP 503"), "distribution": (False, "storagedriver_filesystem: disk on fire"),
      "harbor": (False, "harbor component 'core' unhealthy: disk on fire"), "tcp": (True, "connected")}),
    ("readonly", {}, {"oci": (False, "write canary: PATCH returned 507"), "distribution": (True, "HTTP 200"),
                      "harbor": (True, "healthy"), "tcp": (True, "connected")}),
    ("slow", {"delay": 3}, {"oci": (False, "timeout after 0.3s"), "distribution": (False, "timeout after 0.3s"),
                            "harbor": (False, "timeout after 0.3s"), "tcp": (True, "connected")}),
    ("garbage", {}, {"oci": (False, "body is not JSON"), "distribution": (False, "body is not JSON"),
                     "harbor": (False, "body is not JSON"), "tcp": (True, "connected")}),
    ("refuse", {}, {"oci": (False, "connection refused"), "distribution": (False, "connection refused"),
                    "harbor": (False, "connection refused"), "tcp": (False, "connection refused")}),
]


@pytest.mark.parametrize("mode,extra,expected", MODE_CASES, ids=[c[0] for c in MODE_CASES])
async def test_mode_as_checks_see_it(standin, mode, extra, expected) -> None:
    backend, control, checks, session = standin
    with structlog.testing.capture_logs() as logs:
        status, state = await set_mode(session, control, mode, **extra)
    assert status == 200 and state["mode"] == mode
    reason = {"readonly": "no space left on device", "unhealthy": extra.get("reason")}.get(mode)
    assert [e for e in logs if e["event"] == "mode_changed"] == [
        {"event": "mode_changed", "log_level": "info", "registry": "contoso", "replica": "eastus", "mode": mode,
         "previous": "healthy", "delay": extra.get("delay") if mode == "slow" else None, "reason": reason}]
    results = {name: await run_check(check, session, 0.3) for name, check in checks.items()}
    for name, (ok, reason) in expected.items():
        assert results[name].ok is ok and reason in results[name].reason, (name, results[name])
    # restore: healthy again, re-bound after refuse, slow replies released
    status, state = await set_mode(session, control, "healthy")
    assert status == 200 and state["listening"]
    for name, check in checks.items():
        result = await run_check(check, session, 2)
        assert result.ok, (name, result)


async def test_restore_releases_slow_replies(standin) -> None:
    _backend, control, checks, session = standin
    await set_mode(session, control, "slow", delay=20)
    started = time.monotonic()
    pending = asyncio.create_task(run_check(checks["distribution"], session, 10))
    await asyncio.sleep(0.2)
    await set_mode(session, control, "healthy")
    result = await pending
    assert result.ok and time.monotonic() - started < 3, result


async def test_storage_survives_refuse(standin) -> None:
    backend, control, checks, session = standin
    await backend.set_mode("contoso", "eastus", "healthy")
    base = f"http://{ADDR}:{checks['oci'].port}"
    async with session.put(f"{base}/v2/lib/app/manifests/v1", data=b"{}") as resp:
        assert resp.status == 201
    await set_mode(session, control, "refuse")
    await set_mode(session, control, "healthy")
    canary = ProbeCheck(kind="oci", address=ADDR, port=checks["oci"].port, scheme="http", canary_manifest="lib/app:v1")
    assert (await run_check(canary, session, 2)).ok


CONTROL_ERRORS = [
    # path, body, status, error substring
    ("/replicas/contoso/nowhere/mode", {"mode": "refuse"}, 404, "no replica contoso/nowhere"),
    ("/replicas/contoso/eastus/mode", {"mode": "explode"}, 400, "mode must be one of healthy, unhealthy"),
    ("/replicas/contoso/eastus/mode", {"mode": "slow", "delay": -1}, 400, "delay must be"),
    ("/replicas/contoso/eastus/mode", {"mode": "slow", "delay": True}, 400, "delay must be"),
    ("/replicas/contoso/eastus/mode", {"mode": "slow", "speed": 3}, 400, "unknown field(s): speed"),
    ("/replicas/contoso/eastus/mode", ["slow"], 400, "expected a JSON object"),
    ("/replicas/contoso/eastus/mode", "not json", 400, "expected a JSON body"),
]


@pytest.mark.parametrize("path,body,status,error", CONTROL_ERRORS)
async def test_control_errors(standin, path, body, status, error) -> None:
    backend, control, _checks, session = standin
    kwargs = {"data": body} if isinstance(body, str) else {"json": body}
    async with session.post(control + path, **kwargs) as resp:
        assert resp.status == status
        assert error in (await resp.json())["error"]
    assert backend.status()[0]["mode"] == "healthy"


async def test_control_lists_replicas(standin) -> None:
    _backend, control, checks, session = standin
    await set_mode(session, control, "slow", delay=5)
    async with session.get(f"{control}/replicas") as resp:
        replicas = (await resp.json())["replicas"]
    assert replicas == [{"registry": "contoso", "replica": "eastus", "mode": "slow", "delay": 5.0, "reason": None,
                         "listeners": [f"{ADDR}:{checks['oci'].port}", f"{ADDR}:{checks['distribution'].port}"],
                         "tls": [], "listening": True}]


async def test_rebind_failure_keeps_refusing() -> None:
    (port,) = ports(1)
    target = make_targets([("contoso", "eastus", [(ADDR, port)])])[0]
    async with backend_running(target) as (backend, control), make_session() as session:
        await set_mode(session, control, "refuse")
        squatter = await asyncio.start_server(lambda r, w: w.close(), ADDR, port)
        try:
            status, body = await set_mode(session, control, "healthy")
        finally:
            squatter.close()
        assert status == 500 and f"cannot listen on {ADDR}:{port}" in body["error"]
        assert backend.status()[0]["mode"] == "refuse" and not backend.status()[0]["listening"]
        status, _ = await set_mode(session, control, "healthy")
        assert status == 200


async def test_tls_listener(tmp_path: Path) -> None:
    require_tool("openssl", "to make the listener's certificate")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", "key.pem", "-out", "cert.pem", "-days", "2", "-subj", "/CN=registry.test",
                    "-addext", "subjectAltName=DNS:registry.test"], cwd=tmp_path, check=True, capture_output=True,
                   timeout=20)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    (port,) = ports(1)
    target = make_targets([("contoso", "eastus", [(ADDR, port)])], tls=[(ADDR, port)])[0]
    check = ProbeCheck(kind="oci", address=ADDR, port=port, scheme="https", host_header="registry.test",
                       ca_file=str(tmp_path / "cert.pem"), write_canary="geotm/canary")
    async with backend_running(target, ssl_context=context), make_session() as session:
        result = await run_check(check, session, 2)
    assert result.ok, result


# -- CLI -----------------------------------------------------------------------------------------

async def run_cli(*argv: str) -> tuple[int, str, str]:
    """cli.main in a thread (it blocks on HTTP to our own control listener), output captured."""
    import io
    out, err = io.StringIO(), io.StringIO()

    def call() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return cli.main(list(argv))
    code = await asyncio.wait_for(asyncio.to_thread(call), 10)
    return code, out.getvalue(), err.getvalue()


async def test_cli_fail_restore_status() -> None:
    a, b, c = ports(3)
    targets = make_targets([("contoso", "eastus", [(ADDR, a)]), ("fabrikam", "eastus", [(ADDR, b)]),
                            ("contoso", "westus", [(ADDR, c)])])
    async with backend_running(*targets) as (backend, control), make_session() as session:
        where = control.removeprefix("http://")
        modes = lambda: {f"{s['registry']}/{s['replica']}": s["mode"] for s in backend.status()}  # noqa: E731

        code, out, _ = await run_cli("fail", "eastus", "--mode", "refuse", "--control", where)
        assert code == 0 and "contoso/eastus  refuse" in out and "fabrikam/eastus  refuse" in out
        assert modes() == {"contoso/eastus": "refuse", "fabrikam/eastus": "refuse", "contoso/westus": "healthy"}
        tcp = ProbeCheck(kind="tcp", address=ADDR, port=a, scheme="http")
        assert "connection refused" in (await run_check(tcp, session, 1)).reason

        code, out, _ = await run_cli("restore", "eastus", "--registry", "fabrikam", "--control", where)
        assert code == 0 and modes()["fabrikam/eastus"] == "healthy" and modes()["contoso/eastus"] == "refuse"
        code, _, _ = await run_cli("restore", "eastus", "--control", where)
        assert code == 0 and set(modes().values()) == {"healthy"}
        assert (await run_check(tcp, session, 1)).ok

        code, out, _ = await run_cli("fail", "westus", "--mode", "slow", "--delay", "7", "--control", where)
        assert code == 0 and "contoso/westus  slow (7s)" in out
        code, out, _ = await run_cli("fail", "westus", "--reason", "disk full", "--control", where)
        assert code == 0 and "unhealthy: disk full" in out
        code, out, _ = await run_cli("status", "--control", where)
        assert code == 0 and out.count("\n") == 3 and "contoso/westus  unhealthy: disk full" in out
        code, out, _ = await run_cli("status", "--json", "--control", where)
        assert code == 0 and len(json.loads(out)) == 3

        code, _, err = await run_cli("fail", "northpole", "--control", where)
        assert code == 1 and "no replica 'northpole'; served: contoso/eastus" in err
        code, _, err = await run_cli("fail", "eastus", "--registry", "nope", "--control", where)
        assert code == 1 and "in registry 'nope'" in err


async def test_cli_without_control_listener() -> None:
    (port,) = ports(1, "127.0.0.1")
    code, _, err = await run_cli("status", "--control", f"127.0.0.1:{port}")
    assert code == 1 and "cannot reach the control listener" in err


@pytest.mark.parametrize("argv,message", [
    (["serve"], "one of the arguments --config --target is required"),
    (["serve", "--target", "contoso=127.0.0.1:1"], "expected REGISTRY/REPLICA=HOST:PORT"),
    (["fail", "eastus", "--mode", "explode"], "invalid choice"),
    (["fail", "eastus", "--delay", "-3"], "bad --delay"),
    (["status", "--control", "nowhere:port"], "bad --control"),
])
def test_cli_usage_errors(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_cli_serve_config_errors(tmp_path: Path, capsys) -> None:
    assert cli.main(["serve", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    config = tmp_path / "none.yaml"
    config.write_text(CONFIG.format(addr=ADDR, other=OTHER, oci=1, debug=2, tls=3).split("    replicas:")[0]
                      + "    replicas:\n      eastus: {addresses: [127.0.0.31]}\n")
    assert cli.main(["serve", "--config", str(config)]) == 2
    assert "has probe checks: nothing to serve" in capsys.readouterr().err


def _http_json(url: str) -> object:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=1) as resp:
        return json.loads(resp.read())


def test_serve_subprocess(tmp_path: Path) -> None:
    """The real command: serve a config, fail/restore via the CLI, stop on SIGTERM."""
    oci, debug = ports(2)
    (tls,) = ports(1, OTHER)
    (control,) = ports(1, "127.0.0.1")
    config = tmp_path / "geotm.yaml"
    config.write_text(CONFIG.format(addr=ADDR, other=OTHER, oci=oci, debug=debug, tls=tls))
    argv = [sys.executable, "-m", "standin.cli", "serve", "--config", str(config),
            "--control", f"127.0.0.1:{control}", "--log-format", "json"]
    ready = lambda: _http_json(f"http://127.0.0.1:{control}/healthz") == {"ok": True}  # noqa: E731
    with harness.ServiceProcess(argv, ready, "geotm-backend", cwd=harness.REPO_ROOT, timeout=15) as proc:
        checks = checks_for(oci, debug)

        async def probe() -> dict[str, bool]:
            async with make_session() as session:
                return {name: (await run_check(check, session, 1)).ok for name, check in checks.items()}

        assert asyncio.run(probe()) == {"oci": True, "distribution": True, "harbor": True, "tcp": True}
        assert cli.main(["fail", "eastus", "--mode", "readonly", "--control", f"127.0.0.1:{control}"]) == 0
        assert asyncio.run(probe()) == {"oci": False, "distribution": True, "harbor": True, "tcp": True}
        assert cli.main(["fail", "eastus", "--mode", "refuse", "--control", f"127.0.0.1:{control}"]) == 0
        assert asyncio.run(probe()) == {"oci": False, "distribution": False, "harbor": False, "tcp": False}
        assert cli.main(["restore", "eastus", "--control", f"127.0.0.1:{control}"]) == 0
        assert asyncio.run(probe()) == {"oci": True, "distribution": True, "harbor": True, "tcp": True}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    events = [json.loads(line) for line in proc.log_lines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert names.count("mode_changed") == 3 and names[-1] == "stopped"
    assert any(e["event"] == "tls_listener_served_plain" and e["replica"] == "westeurope" for e in events)


def test_backend_takes_plain_tuples() -> None:
    backend = Backend([("contoso", "eastus", [(ADDR, 1), (ADDR, 2)])])
    assert [s["listeners"] for s in backend.status()] == [[f"{ADDR}:1", f"{ADDR}:2"]]
    with pytest.raises(ValueError, match="claimed by both"):
        Backend([("a", "x", [(ADDR, 1)]), ("b", "y", [(ADDR, 1)])])
