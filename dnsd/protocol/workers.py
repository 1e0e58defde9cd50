"""`dnsd serve --workers N`: a supervisor runs N dnsd processes on the same addresses (SO_REUSEPORT),
forwards SIGTERM/SIGINT/SIGHUP to them, and restarts a worker that dies. Worker 0 serves the admin
API; the others follow override changes through the shared state file."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import structlog

log = structlog.get_logger(__name__)

RESTART_BACKOFF = (0.5, 1, 2, 5, 10)


def worker_argv(argv: list[str], index: int, count: int, state_dir: str) -> list[str]:
    """The worker's command line: ours minus --workers, plus its index (and admin off beyond worker 0)."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        args.append(arg)
    args += ["--worker-index", str(index), "--worker-state-dir", state_dir]
    if index > 0:
        args += ["--admin-listen", "off"]
    return [sys.executable, "-m", "dnsd", *args]


def supervise(argv: list[str], count: int) -> int:
    """Run `count` workers until SIGTERM/SIGINT; returns the exit status."""
    state_dir = tempfile.mkdtemp(prefix="geotm-workers-")
    children: dict[int, subprocess.Popen] = {}
    restarts = {i: 0 for i in range(count)}
    stopping = False

    def start(index: int) -> None:
        children[index] = subprocess.Popen(worker_argv(argv, index, count, state_dir))
        log.info("worker_started", worker=index, pid=children[index].pid)

    def forward(sig: int, _frame) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for index, child in children.items():
            if sig == signal.SIGUSR1:  # worker 0 reloaded through its admin API: reload the others
                if index > 0 and child.poll() is None:
                    child.send_signal(signal.SIGHUP)
            elif child.poll() is None:
                child.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, forward)
    for index in range(count):
        start(index)
    try:
        while not stopping:
            time.sleep(0.2)
            for index, child in list(children.items()):
                code = child.poll()
                if code is None or stopping:
                    continue
                delay = RESTART_BACKOFF[min(restarts[index], len(RESTART_BACKOFF) - 1)]
                log.error("worker_exited", worker=index, pid=child.pid, code=code, restart_in=delay)
                if code == 2 and restarts[index] == 0:
                    log.error("worker_cannot_start", worker=index, effect="stopping all workers")
                    forward(signal.SIGTERM, None)
                    break
                time.sleep(delay)
                restarts[index] += 1
                start(index)
    finally:
        deadline = time.monotonic() + 10
        for child in children.values():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for name in os.listdir(state_dir):
            os.unlink(os.path.join(state_dir, name))
        os.rmdir(state_dir)
    codes = [child.returncode for child in children.values()]
    return 0 if all(code in (0, -signal.SIGTERM, -signal.SIGINT) for code in codes) else 1
