"""The forged-feed attack, run for real on loopback: someone who is not probes tries to make dnsd route
by a health document of their own, or to read or post to probes. Every attempt must be refused.

    .venv/bin/python bench/attacks/forged_feed.py [--guesses 200] [--deadline 60]

It starts a genuine `probes serve` (TLS from a CA made here, a bearer token, contoso/eastus probed on
a closed port so it is degraded) and, per scenario, a real dnsd and an attacker's HTTP server in this
process. Scenarios:
  control          dnsd polls the genuine probes with the right CA and token: eastus is degraded
                   (proves the set-up can apply health at all)
  unprotected      the attack as it worked before: a plain-http feed URL answered by the attacker;
                   dnsd applies the forged document (westeurope degraded). Must happen: otherwise the
                   forged document itself is wrong and the refusals below would prove nothing
  impostor-tls     the attacker answers at the feed's address with a certificate of its own CA and a
                   forged document (every replica online, westeurope degraded): dnsd refuses the TLS
                   handshake, never sends its token, applies nothing
  impostor-plain   the same over plain HTTP: the feed URL is https, so dnsd never speaks plain HTTP
  read-verdicts    GET /v1/health on probes without a token, and with guessed tokens (--guesses,
                   bounded): 401 every time, no verdict in any answer, refusals logged rate-limited
  post-document    POST a forged document to probes' /v1/health: refused (401), probes takes no input
Exit status 0 when every attack was refused and the control worked, 1 otherwise. Loopback only;
every loop is bounded in count and in time (--deadline).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import ssl
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import dns.message
import dns.query
from aiohttp import web
from attacklib import REGISTRY, ZONE  # the example's (puts the repository on sys.path)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dnsd import names  # noqa: E402
from dnsd.common.children import Child, free_port  # noqa: E402
from drills.pki import make_ca, make_server_cert  # noqa: E402
from tests import harness  # noqa: E402
from tests.dnstest import probed_example  # noqa: E402

POLL = 0.2


def forged_document() -> dict:
    """What an attacker would serve: eastus (really broken) online, westeurope (healthy) degraded."""
    def endpoint(replica: str, status: str) -> dict:
        return {"registry": "contoso", "replica": replica, "status": status, "reason": "forged", "since": time.time()}
    return {"format": "geotm-health/1", "instance": "attacker", "generation": 999, "generated_at": time.time(),
            "endpoints": [endpoint("eastus", "online"), endpoint("westeurope", "degraded"),
                          endpoint("southeastasia", "degraded")]}


class Attacker:
    """The attacker's feed server, in a thread: serves the forged document, records what it was sent."""

    def __init__(self, context: ssl.SSLContext | None):
        self.port = free_port()
        self.requests: list[dict[str, str]] = []
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def health(request: web.Request) -> web.Response:
            self.requests.append(dict(request.headers))
            return web.json_response(forged_document())

        async def start() -> None:
            app = web.Application()
            app.router.add_get("/v1/health", health)
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=context).start()
            ready.set()

        self.thread = threading.Thread(target=lambda: (self.loop.run_until_complete(start()), self.loop.run_forever()),
                                       daemon=True)
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("attacker server did not start")

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def request(url: str, token: str | None = None, context: ssl.SSLContext | None = None, method: str = "GET",
            body: bytes | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(urllib.request.Request(url, data=body, headers=headers, method=method), timeout=2) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def dnsd_view(config: Path, seconds: float) -> tuple[dict[str, str], str, str | None]:
    """Run dnsd for `seconds`: (contoso's replica statuses, the traffic-manager target, the feed's error)."""
    with harness.dnsd(config) as dnsd:
        time.sleep(seconds)
        status = json.loads(request(f"http://127.0.0.1:{dnsd.admin_port}/v1/status")[1])
        reply = dns.query.udp(dns.message.make_query(names.traffic_manager_name(REGISTRY, ZONE), "A"), "127.0.0.1",
                              port=dnsd.port, timeout=2)
    contoso = next(r for r in status["registries"] if r["name"] == REGISTRY)
    statuses = {r["name"]: r["status"] for r in contoso["replicas"]}
    return statuses, str(reply.answer[0][0].target), status["health"]["feeds"][0]["error"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forged_feed.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--guesses", type=int, default=200, help="token guesses against probes (max 10000)")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds the guessing may take at most")
    args = parser.parse_args(argv)
    guesses = max(1, min(args.guesses, 10_000))
    results: list[tuple[str, bool, str]] = []
    with tempfile.TemporaryDirectory(prefix="geotm-attack-") as tmp:
        work = Path(tmp)
        ca = make_ca(work / "ca")
        cert = make_server_cert(work / "ca", "probes", ca, ("probes.test",), ("127.0.0.1",))
        rogue = make_ca(work / "rogue")
        rogue_cert = make_server_cert(work / "rogue", "impostor", rogue, ("probes.test",), ("127.0.0.1",))
        token = work / "token"
        token.write_text(secrets.token_urlsafe(32) + "\n")
        probes_port = free_port()
        trusted = ssl.create_default_context(cafile=str(ca[0]))
        probes_config = probed_example(work / "probes.yaml", probes_port, {}, poll=POLL, probes={
            "tls": {"cert_file": str(cert.cert), "key_file": str(cert.key)}, "token_file": str(token)})
        argv = [sys.executable, "-m", "probes.cli", "serve", "--config", str(probes_config), "--log-format", "json"]
        with Child(argv, name="probes", cwd=ROOT, extra_env={"PYTHONUNBUFFERED": "1"}) as probes:
            probes.wait_ready(lambda: request(f"https://127.0.0.1:{probes_port}/healthz", context=trusted)[0] == 200,
                              15)
            time.sleep(1.0)  # a few rounds: eastus degraded at probes
            genuine = {"feeds": [f"https://127.0.0.1:{probes_port}/v1/health"], "ca_file": str(ca[0]),
                       "token_file": str(token)}
            status, target, error = dnsd_view(probed_example(work / "dnsd-control.yaml", probes_port, genuine,
                                                             poll=POLL), 2.0)
            results.append(("control", status["eastus"] == "degraded" and "westeurope" in target,
                            f"eastus {status['eastus']}, global name -> {target}, feed error {error}"))

            attacker = Attacker(None)
            try:
                plain = {"feeds": [f"http://127.0.0.1:{attacker.port}/v1/health"]}
                status, target, error = dnsd_view(probed_example(work / "dnsd-unprotected.yaml", probes_port, plain,
                                                                 poll=POLL), 2.0)
            finally:
                attacker.close()
            results.append(("unprotected", status["westeurope"] == "degraded",
                            f"forged document applied: {status}, global name -> {target} (why feeds need TLS "
                            "and a token)"))

            for name, context in (("impostor-tls", rogue_cert), ("impostor-plain", None)):
                server_context = None
                if context is not None:
                    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                    server_context.load_cert_chain(str(context.cert), str(context.key))
                attacker = Attacker(server_context)
                try:
                    impostor = {**genuine, "feeds": [f"https://127.0.0.1:{attacker.port}/v1/health"]}
                    status, target, error = dnsd_view(probed_example(work / f"dnsd-{name}.yaml", probes_port,
                                                                     impostor, poll=POLL), 2.0)
                finally:
                    attacker.close()
                leaked = sum(1 for h in attacker.requests if "Authorization" in h)
                refused = "degraded" not in status.values() and leaked == 0 and bool(error)
                results.append((name, refused, f"forged document applied: {not refused}; requests reaching the "
                                               f"attacker: {len(attacker.requests)}, carrying the token: {leaked}; "
                                               f"dnsd: {error}"))

            base = f"https://127.0.0.1:{probes_port}/v1/health"
            code, body = request(base, context=trusted)
            results.append(("read-verdicts (no token)", code == 401 and b"contoso" not in body, f"HTTP {code}"))
            started, codes, leaked = time.monotonic(), {}, 0
            for _ in range(guesses):
                if time.monotonic() - started > args.deadline:
                    break
                code, body = request(base, secrets.token_urlsafe(32), trusted)
                codes[code] = codes.get(code, 0) + 1
                leaked += b"contoso" in body
            elapsed = time.monotonic() - started
            sent = sum(codes.values())
            logged = probes.log_text().count('"probes_request_refused"')
            results.append((f"read-verdicts ({sent} guessed tokens)", codes == {401: sent} and not leaked,
                            f"answers {codes} in {elapsed:.1f}s; refusal log lines: {logged} (rate-limited)"))
            code, _ = request(base, context=trusted, method="POST", body=json.dumps(forged_document()).encode())
            code_with, _ = request(base, token.read_text().strip(), trusted, method="POST",
                                   body=json.dumps(forged_document()).encode())
            results.append(("post-document", code == 401 and code_with == 405,
                            f"HTTP {code} without the token, {code_with} even with it (probes takes no input)"))
    width = max(len(name) for name, _, _ in results)
    for name, ok, detail in results:
        verdict = ("FAILED" if not ok else "OK" if name == "control" else "APPLIED" if name == "unprotected"
                   else "REFUSED")
        print(f"{name:<{width}}  {verdict:<8} {detail}")
    failed = [name for name, ok, _ in results if not ok]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
