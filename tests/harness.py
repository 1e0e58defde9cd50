"""Test helpers that run real programs (the dnsd server, small inline scripts) as child processes.

Every child is started here and stopped here, by its PID: SIGTERM, up to 5 s of grace, then
SIGKILL. Children run in their own session, so anything they spawned themselves (worker
processes) is in a process group whose id is the child's PID, and is killed with it if left over.
"""
from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dns.message
import dns.query

from dnsd.routing.health import EndpointHealth, FeedDocument, Status

REPO_ROOT = Path(__file__).resolve().parent.parent

_STOP_GRACE = 5.0
_POLL_INTERVAL = 0.05


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` that is free for both UDP and TCP right now (another process could still
    take it before you bind it; good enough for tests)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            with socket.socket(family, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no port free for both UDP and TCP on {host} after 50 tries")


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = _POLL_INTERVAL) -> float:
    """Poll `condition()` until it is true; returns the seconds that took. Fails (AssertionError
    naming `what`) once `timeout` seconds pass: tests wait for a condition, never a fixed time."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started >= timeout:
            raise AssertionError(f"{what}: not reached within {timeout:g} s")
        time.sleep(interval)
    return time.monotonic() - started


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


class ServiceProcess:
    """A child process with its output in a temp log file; a context manager that waits until
    `ready()` is true on entry and stops the process on exit.

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
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.preexec_fn = preexec_fn  # runs in the child before exec (e.g. resource.setrlimit)
        self.ready = ready
        self.name = name
        self.env = dict(env or {})
        self.timeout = timeout
        self.cwd = cwd
        self.port: int | None = None  # set by helpers such as dnsd(); informational
        self.pid: int = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: str | None = None
        self._final_log: str | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> ServiceProcess:
        if self._proc is not None:
            raise RuntimeError(f"{self.name} already started")
        fd, self._log_path = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=self.preexec_fn,
            )
        finally:
            os.close(fd)
        self.pid = self._proc.pid
        deadline = time.monotonic() + self.timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._fail(f"{self.name} (pid {self.pid}) exited with code {code} before it was ready")
            if self._is_ready():
                return self
            if time.monotonic() >= deadline:
                self._fail(f"{self.name} (pid {self.pid}) not ready after {self.timeout:g} s")
            time.sleep(_POLL_INTERVAL)

    def _is_ready(self) -> bool:
        try:
            return bool(self.ready())
        except Exception:
            return False

    def _fail(self, message: str) -> None:
        self.stop()
        tail = "\n".join(self.log_text().splitlines()[-40:])
        raise RuntimeError(f"{message}\n--- last 40 log lines of {self.name} ---\n{tail}")

    def stop(self) -> int | None:
        """SIGTERM, wait up to 5 s, then SIGKILL; returns the exit code (None if never started)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=_STOP_GRACE)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=_STOP_GRACE)
        # Leftovers of our own child (its workers), in the group it leads: kill them too.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._collect_log()
        return proc.returncode

    def _collect_log(self) -> None:
        if self._log_path is None:
            return
        try:
            self._final_log = Path(self._log_path).read_text(errors="replace")
            os.unlink(self._log_path)
        except OSError:
            pass
        self._log_path = None

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # -- inspection ----------------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """Everything the process wrote to stdout and stderr so far (kept after stop())."""
        if self._log_path is not None:
            try:
                return Path(self._log_path).read_text(errors="replace")
            except OSError:
                return ""
        return self._final_log or ""

    def log_lines(self, last: int | None = None) -> list[str]:
        lines = self.log_text().splitlines()
        return lines if last is None else list(collections.deque(lines, maxlen=last))

    def wait_for_log(self, text: str, timeout: float = 5.0) -> bool:
        """Poll the log until `text` appears (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_text():
                return True
            time.sleep(_POLL_INTERVAL)
        return text in self.log_text()

    def send_signal(self, sig: int) -> None:
        if self._proc is None:
            raise RuntimeError(f"{self.name} not started")
        if self._proc.poll() is None:
            os.kill(self._proc.pid, sig)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself; raises subprocess.TimeoutExpired."""
        if self._proc is None:
            raise RuntimeError(f"{self.name} not started")
        return self._proc.wait(timeout=timeout)


def dnsd(config_path: str | os.PathLike[str], port: int | None = None, extra_args: Sequence[str] = (),
         env: dict[str, str] | None = None, timeout: float = 15.0, admin_port: int | None = None,
         preexec_fn: Callable[[], None] | None = None) -> ServiceProcess:
    """The real server, `python -m dnsd serve --config FILE --listen 127.0.0.1:PORT`, ready when
    it answers a UDP query. Use as `with dnsd(cfg) as proc: ... proc.port ...`."""
    if port is None:
        port = free_port()
    admin_port = admin_port or free_port()
    argv = [sys.executable, "-m", "dnsd", "serve", "--config", str(config_path),
            "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin_port}", *extra_args]
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    proc = ServiceProcess(
        argv,
        ready=lambda: udp_answers("127.0.0.1", port),
        name="dnsd",
        env={"PYTHONPATH": pythonpath, **(env or {})},
        timeout=timeout,
        cwd=REPO_ROOT,
        preexec_fn=preexec_fn,
    )
    proc.port = port
    proc.admin_port = admin_port
    return proc


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
