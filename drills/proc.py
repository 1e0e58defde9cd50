"""Child processes of the drill: started here, stopped here by PID, their output logged and parsed.

Started and stopped by dnsd.common.children (the one owner of child processes for bench, drills and
tests): every child gets PR_SET_PDEATHSIG=SIGKILL, so nothing outlives a drill that is itself killed,
and runs in its own session, so a Ctrl-C reaches only the drill (which then stops them in order).
"""
from __future__ import annotations

import atexit
import json
import os
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from dnsd.common import children

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
STOP_GRACE = children.STOP_GRACE


def parse_timestamp(value: object) -> float | None:
    """structlog's ISO UTC timestamp (or the registry's RFC 3339 `time`) -> epoch seconds."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


LineListener = Callable[[str, float, dict | None, str], None]  # (child name, at, json or None, raw line)


class Child(children.Child):
    """A drill child (dnsd.common.children.Child, started at once, dying with the drill): each output
    line parsed as JSON for the listener, start and exit marked in its log."""

    def __init__(self, name: str, argv: list[str], log_path: Path, *, cwd: Path | None = None,
                 env: dict[str, str] | None = None, listener: LineListener | None = None):
        super().__init__(argv, log_path, name=name, cwd=cwd, env=env, die_with_parent=True, on_line=self._line)
        self.listener = listener
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._mark(f"start: {' '.join(argv)}")
        self.start()

    def _mark(self, what: str) -> None:
        assert self.log_path is not None
        with open(self.log_path, "a") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} {what}\n")

    def _line(self, line: str, received: float) -> None:
        if self.listener is None:
            return
        parsed = None
        if line.startswith("{"):
            try:
                parsed = json.loads(line)
            except ValueError:
                parsed = None
        self.listener(self.name, received, parsed if isinstance(parsed, dict) else None, line)

    def alive(self) -> bool:
        return self.running()

    def signal(self, sig: int) -> None:
        self.send_signal(sig)

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        code = super().stop(grace)
        self._mark(f"exit {code}")
        return code


atexit.register(children.stop_all, 2.0)  # a drill that ends by an exception still stops its children


def run(argv: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """A short command with a hard time limit (killed by PID when it overruns)."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, preexec_fn=children.die_with_parent,
                          stdin=subprocess.DEVNULL, **kwargs)


def geotm_env() -> dict[str, str]:
    """The environment of a geotm command (dnsd, probes): this one without proxies, this checkout first
    on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    repo = str(REPOSITORY_ROOT)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
