"""Child processes of the drill: started here, stopped here by PID, their output logged and parsed.

Every child gets PR_SET_PDEATHSIG=SIGKILL, so nothing outlives a drill that is itself killed, and
runs in its own session, so a Ctrl-C reaches only the drill (which then stops them in order).
"""
from __future__ import annotations

import atexit
import ctypes
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

PR_SET_PDEATHSIG = 1
REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
STOP_GRACE = 5.0
_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def parse_timestamp(value: object) -> float | None:
    """structlog's ISO UTC timestamp (or the registry's RFC 3339 `time`) -> epoch seconds."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


LineListener = Callable[[str, float, dict | None, str], None]  # (child name, at, json or None, raw line)


class Child:
    def __init__(self, name: str, argv: list[str], log_path: Path, *, cwd: Path | None = None,
                 env: dict[str, str] | None = None, listener: LineListener | None = None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.listener = listener
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "a", buffering=1)
        self._log.write(f"--- {time.strftime('%H:%M:%S')} start: {' '.join(argv)}\n")
        self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, cwd=cwd, env=env, preexec_fn=die_with_parent,
                                      start_new_session=True, text=True, errors="replace")
        self.pid = self.popen.pid
        self._reader = threading.Thread(target=self._read, name=f"log-{name}", daemon=True)
        self._reader.start()
        _LIVE.add(self)

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:  # ends when the child (and all holders of the pipe) exit
            now = time.time()
            self._log.write(line)
            parsed = None
            if line.startswith("{"):
                try:
                    parsed = json.loads(line)
                except ValueError:
                    parsed = None
            if self.listener is not None:
                try:
                    self.listener(self.name, now, parsed if isinstance(parsed, dict) else None, line)
                except Exception:  # a listener bug must not stop the draining of the pipe
                    pass

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        """SIGCONT (in case it is frozen) + SIGTERM, then SIGKILL after `grace` seconds."""
        if self.alive():
            for sig in (signal.SIGCONT, signal.SIGTERM):
                try:
                    os.kill(self.pid, sig)
                except ProcessLookupError:
                    break
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(grace)
        self._reader.join(2.0)
        if not self._reader.is_alive():  # else the reader still writes; the file closes with the process
            self._log.write(f"--- {time.strftime('%H:%M:%S')} exit {self.popen.returncode}\n")
            self._log.close()
        _LIVE.discard(self)
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL now (a fault, not a shutdown)."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(STOP_GRACE)


_LIVE: set[Child] = set()


@atexit.register
def _stop_all() -> None:
    for child in list(_LIVE):
        try:
            child.stop(grace=2.0)
        except Exception:
            pass


def run(argv: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """A short command with a hard time limit (killed by PID when it overruns)."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, preexec_fn=die_with_parent,
                          stdin=subprocess.DEVNULL, **kwargs)


def geotm_env() -> dict[str, str]:
    """The environment of a geotm command (dnsd, probes): this one without proxies, this checkout first
    on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    repo = str(REPOSITORY_ROOT)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
