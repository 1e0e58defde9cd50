"""Child processes of bench, drills and tests: start, wait until ready, stop by PID; ports free for UDP and TCP.

A child runs in its own process group with its output in a log file; it is ready when a polled
condition holds (ChildFailed, with its exit code and log tail, when it exits first or takes too long);
it is stopped with SIGTERM, SIGKILL after a grace period, then SIGKILL to whatever is left in its group.
"""
from __future__ import annotations

import collections
import ctypes
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
POLL_INTERVAL = 0.05
LOG_TAIL_LINES = 40

_PR_SET_PDEATHSIG = 1


class ChildFailed(RuntimeError):
    """A child that exited before it was ready, or was not ready in time. The message names it, its PID
    and exit code, and ends with the last lines of its log."""

    def __init__(self, message: str, returncode: int | None, log_tail: str):
        super().__init__(message)
        self.returncode = returncode
        self.log_tail = log_tail


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` free for both UDP and TCP right now (a DNS server binds both; another process
    could still take it before the caller binds it)."""
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


def poll_until(condition: Callable[[], Any], timeout: float, interval: float = POLL_INTERVAL,
               ignore: tuple[type[BaseException], ...] = ()) -> float | None:
    """Call `condition()` every `interval` seconds until it is true: the seconds that took, or None once
    `timeout` seconds pass. An exception of a type in `ignore` counts as "not yet"; others propagate."""
    started = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - started
        except ignore:
            pass
        if time.monotonic() - started >= timeout:
            return None
        time.sleep(interval)


def die_with_parent() -> None:
    """A preexec_fn: the kernel sends the child SIGKILL when the process that started it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Child:
    """One child process. `start()` runs `argv` in a session (and process group) of its own, stdin from
    /dev/null, stdout and stderr appended to `log_path` (None: a temporary file, removed at stop, its
    text kept). `env` replaces the environment (None: this process's), `extra_env` is added on top.
    `on_line(line, received_at)` (optional) sees every output line as it comes: the output then goes
    through a pipe that a thread drains into the log. `die_with_parent`: SIGKILL when we die.
    A context manager: started on entry (if not yet), stopped on exit."""

    def __init__(self, argv: Sequence[str], log_path: str | os.PathLike[str] | None = None, *,
                 name: str | None = None, cwd: str | os.PathLike[str] | None = None,
                 env: Mapping[str, str] | None = None, extra_env: Mapping[str, str] | None = None,
                 preexec_fn: Callable[[], None] | None = None, die_with_parent: bool = False,
                 on_line: Callable[[str, float], None] | None = None):
        self.argv = [str(arg) for arg in argv]
        self.name = name or Path(self.argv[0]).name
        self.log_path = Path(log_path) if log_path is not None else None
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.extra_env = dict(extra_env or {})
        self.preexec_fn = preexec_fn
        self.die_with_parent = die_with_parent
        self.on_line = on_line
        self.pid = 0
        self._popen: subprocess.Popen | None = None
        self._temporary_log = log_path is None
        self._final_log: str | None = None  # a temporary log's text, kept after it is removed
        self._reader: threading.Thread | None = None

    # -- starting -------------------------------------------------------------------------------

    def start(self) -> Child:
        if self._popen is not None:
            raise RuntimeError(f"{self.name} already started")
        if self._temporary_log:
            fd, path = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log")
            os.close(fd)
            self.log_path = Path(path)
        assert self.log_path is not None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**(os.environ if self.env is None else self.env), **self.extra_env}
        with open(self.log_path, "ab") as log:
            self._popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if self.on_line else log,
                stderr=subprocess.STDOUT, cwd=self.cwd, env=env, start_new_session=True,
                preexec_fn=self._in_child if (self.preexec_fn or self.die_with_parent) else None)
        self.pid = self._popen.pid
        if self.on_line:
            self._reader = threading.Thread(target=self._drain, name=f"log-{self.name}", daemon=True)
            self._reader.start()
        _LIVE.add(self)
        return self

    def _in_child(self) -> None:
        if self.die_with_parent:
            die_with_parent()
        if self.preexec_fn:
            self.preexec_fn()

    def _drain(self) -> None:
        assert self._popen is not None and self._popen.stdout is not None and self.log_path is not None
        with open(self.log_path, "ab", buffering=0) as log:
            for raw in self._popen.stdout:  # ends when the child (and every holder of the pipe) exits
                received = time.time()
                log.write(raw)
                try:
                    self.on_line(raw.decode(errors="replace"), received)
                except Exception:  # a listener's bug must not stop the draining of the pipe
                    pass

    def wait_ready(self, condition: Callable[[], Any], timeout: float, interval: float = POLL_INTERVAL) -> float:
        """Poll `condition()` (an exception counts as "not yet") until it is true: the seconds that took.
        Raises ChildFailed, after stopping the child, when it exits first or `timeout` seconds pass."""
        if self._popen is None:
            raise RuntimeError(f"{self.name} not started")
        started = time.monotonic()
        while True:
            code = self.poll()
            if code is not None:
                self._fail(f"{self.name} (pid {self.pid}) exited with code {code} before it was ready")
            try:
                if condition():
                    return time.monotonic() - started
            except Exception:
                pass
            if time.monotonic() - started >= timeout:
                self._fail(f"{self.name} (pid {self.pid}) not ready after {timeout:g} s")
            time.sleep(interval)

    def _fail(self, message: str) -> None:
        code = self.stop()
        tail = self.log_tail()
        raise ChildFailed(f"{message}\n--- last {LOG_TAIL_LINES} log lines of {self.name} ---\n{tail}", code, tail)

    def reset(self) -> None:
        """Forget a finished run (stopped, or failed in wait_ready) so start() may run the child again,
        with argv changed if need be (a port another process took first)."""
        if self.running():
            raise RuntimeError(f"{self.name} is running: stop it first")
        self._popen, self._reader, self.pid = None, None, 0
        if self._temporary_log:
            self.log_path, self._final_log = None, None

    # -- while it runs --------------------------------------------------------------------------

    def poll(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    @property
    def returncode(self) -> int | None:
        return self.poll()

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def send_signal(self, sig: int) -> None:
        if self._popen is None:
            raise RuntimeError(f"{self.name} not started")
        if self._popen.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float | None) -> int:
        """Wait for the child to exit by itself; raises subprocess.TimeoutExpired."""
        if self._popen is None:
            raise RuntimeError(f"{self.name} not started")
        return self._popen.wait(timeout)

    def log_text(self) -> str:
        """Everything the child wrote so far (kept after stop)."""
        if self._final_log is not None:
            return self._final_log
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(collections.deque(self.log_text().splitlines(), maxlen=lines))

    def wait_for_log(self, text: str, timeout: float) -> bool:
        """Whether `text` appears in the log within `timeout` seconds."""
        return poll_until(lambda: text in self.log_text(), timeout) is not None

    # -- stopping -------------------------------------------------------------------------------

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        """SIGCONT (in case it is frozen) and SIGTERM to its PID, SIGKILL after `grace` seconds, then
        SIGKILL to what is left in its process group (workers it forked, which only our child can have
        put there). Returns the exit code (None if never started); stopping twice is harmless."""
        popen = self._popen
        if popen is None:
            return None
        if popen.poll() is None:
            try:
                for sig in (signal.SIGCONT, signal.SIGTERM):
                    os.kill(popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                popen.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                popen.wait(grace)
        try:
            os.killpg(popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self._reader is not None:
            self._reader.join(2.0)
        if self._temporary_log and self.log_path is not None and self._final_log is None:
            self._final_log = self.log_text()
            try:
                os.unlink(self.log_path)
            except OSError:
                pass
        _LIVE.discard(self)
        return popen.returncode

    def kill(self) -> None:
        """SIGKILL now (a fault to inject, not a shutdown); stop() still collects what is left."""
        if self.running():
            os.kill(self.pid, signal.SIGKILL)
            assert self._popen is not None
            self._popen.wait(STOP_GRACE)

    def __enter__(self) -> Child:
        return self if self._popen is not None else self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


_LIVE: set[Child] = set()


def stop_all(grace: float = STOP_GRACE) -> None:
    """Stop every child this process started and has not stopped yet (after an interrupt)."""
    for child in list(_LIVE):
        child.stop(grace)
