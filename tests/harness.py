"""Test helpers that run real programs (the dnsd server, small inline scripts) as child processes, on
top of dnsd.common.children (started in their own process group, stopped by PID: SIGTERM, up to 5 s
of grace, SIGKILL, then whatever is left in the group), and wait for conditions, never fixed times.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dns.message
import dns.query

from dnsd.common.children import Child, ChildFailed, free_port, poll_until
from dnsd.routing.health import EndpointHealth, FeedDocument, Status

REPO_ROOT = Path(__file__).resolve().parent.parent

def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll `condition()` until it is true; returns the seconds that took. Fails (AssertionError
    naming `what`) once `timeout` seconds pass: tests wait for a condition, never a fixed time."""
    took = poll_until(condition, timeout, interval)
    if took is None:
        raise AssertionError(f"{what}: not reached within {timeout:g} s")
    return took


async def wait_until_async(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> float:
    """wait_until for a test that runs in the event loop (sleeps with asyncio, so the loop runs on)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started >= timeout:
            raise AssertionError(f"{what}: not reached within {timeout:g} s")
        await asyncio.sleep(interval)
    return time.monotonic() - started


def udp_answers(host: str, port: int, qname: str = "azurecr.test.", qtype: str = "SOA", timeout: float = 0.5) -> bool:
    """True when any DNS reply (whatever its rcode) comes back over UDP within `timeout`."""
    query = dns.message.make_query(qname, qtype)
    try:
        dns.query.udp(query, host, port=port, timeout=timeout)
    except Exception:
        return False
    return True


class ServiceProcess(Child):
    """A Child with its output in a temp log file (its text kept after stop) that is ready when
    `ready()` is true: start() waits for that (ChildFailed, a RuntimeError with the log tail, when it
    exits first or `timeout` passes); a context manager that starts it on entry and stops it on exit.

    `env`, when given, is added to (not substituted for) this process's environment.
    """

    def __init__(
        self,
        argv: Sequence[str],
        ready: Callable[[], bool],
        name: str,
        env: dict[str, str] | None = None,
        timeout: float = 15.0,
        cwd: str | os.PathLike[str] | None = None,
        preexec_fn: Callable[[], None] | None = None,  # runs in the child before exec (e.g. resource.setrlimit)
    ) -> None:
        super().__init__(argv, name=name, cwd=cwd, extra_env={"PYTHONUNBUFFERED": "1", **(env or {})},
                         preexec_fn=preexec_fn)
        self.ready = ready
        self.timeout = timeout
        self.port: int | None = None  # set by helpers such as dnsd(); informational

    def start(self) -> ServiceProcess:
        super().start()
        self.wait_ready(self.ready, self.timeout)
        return self

    def log_lines(self, last: int | None = None) -> list[str]:
        lines = self.log_text().splitlines()
        return lines if last is None else lines[len(lines) - last:] if last else []

    def wait_for_log(self, text: str, timeout: float = 5.0) -> bool:
        return super().wait_for_log(text, timeout)


class _Dnsd(ServiceProcess):
    """dnsd on ports picked here. Another process may bind a free port between free_port() and dnsd's
    own bind (parallel tests, other suites on the machine), so a start that fails with EADDRINUSE on
    ports we picked tries again on new ones (3 tries in all)."""

    def __init__(self, argv_for: Callable[[int, int], list[str]], port: int | None, admin_port: int | None,
                 **kwargs) -> None:
        pick = (port is None, admin_port is None)
        port, admin_port = port or free_port(), admin_port or free_port()
        super().__init__(argv_for(port, admin_port), ready=lambda: udp_answers("127.0.0.1", self.port),
                         name="dnsd", **kwargs)
        self._argv_for, self._pick = argv_for, pick
        self.port, self.admin_port = port, admin_port

    def start(self) -> ServiceProcess:
        for attempt in range(3):
            try:
                return super().start()
            except ChildFailed as failure:
                if attempt == 2 or not any(self._pick) or "Address already in use" not in failure.log_tail:
                    raise
            self.reset()
            self.port = free_port() if self._pick[0] else self.port
            self.admin_port = free_port() if self._pick[1] else self.admin_port
            self.argv = self._argv_for(self.port, self.admin_port)
        raise AssertionError("unreachable")


def dnsd(config_path: str | os.PathLike[str], port: int | None = None, extra_args: Sequence[str] = (),
         env: dict[str, str] | None = None, timeout: float = 15.0, admin_port: int | None = None,
         preexec_fn: Callable[[], None] | None = None) -> ServiceProcess:
    """The real server, `python -m dnsd serve --config FILE --listen 127.0.0.1:PORT`, ready when
    it answers a UDP query. Use as `with dnsd(cfg) as proc: ... proc.port ...`."""
    def argv_for(port: int, admin_port: int) -> list[str]:
        return [sys.executable, "-m", "dnsd", "serve", "--config", str(config_path),
                "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin_port}", *extra_args]
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return _Dnsd(argv_for, port, admin_port, env={"PYTHONPATH": pythonpath, **(env or {})}, timeout=timeout,
                 cwd=REPO_ROOT, preexec_fn=preexec_fn)


class FakeFeed(ThreadingHTTPServer):
    """A probes stand-in on loopback: GET /v1/health is a document saying `degraded` is down and the
    rest are up; counts the polls (tests and bench/attacks)."""

    daemon_threads = True

    def __init__(self, registry: str, replicas: list[str], degraded: str):
        now = time.time()
        endpoints = {(registry, rep): EndpointHealth(Status.DEGRADED if rep == degraded else Status.ONLINE,
                                                     "fake feed", now) for rep in replicas}
        self.body = json.dumps(FeedDocument("attack-fake-feed", 1, now, endpoints).to_json()).encode()
        self.polls = 0
        super().__init__(("127.0.0.1", 0), _FeedHandler)
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/health"

    def __enter__(self) -> FakeFeed:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


class _FeedHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.server.polls += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, *args) -> None:
        pass
