"""dnsd.common.children with real child processes (small inline Python scripts): ready, exited early,
never ready, stopped with SIGTERM or (ignoring it) SIGKILL, workers in its process group stopped with
it, output lines seen as they come, killed with a dead parent; poll_until and free_port."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from dnsd.common import children
from dnsd.common.children import Child, ChildFailed, free_port, poll_until

PY = sys.executable


def script(source: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(source)]


def gone(pid: int) -> bool:
    """No such process, or a zombie (an orphan's zombie waits for init, which may be slow to reap)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


READY = """
    import sys, time
    print("warming up", flush=True)
    print("ready", flush=True)
    time.sleep(60)
"""
EXITS = """
    import sys
    print("config is broken: line 3", file=sys.stderr, flush=True)
    sys.exit(2)
"""
SILENT = """
    import time
    print("waiting", flush=True)
    time.sleep(60)
"""
DEAF = """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    time.sleep(60)
"""
# forks a worker that ignores SIGTERM (in the child's process group), prints its PID, exits on SIGTERM
WITH_WORKER = """
    import signal, subprocess, sys, time
    worker = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
    print(f"worker {worker.pid}", flush=True)
    print("ready", flush=True)
    time.sleep(60)
"""


def logged_ready(child: Child) -> bool:
    return "ready" in child.log_text()


@dataclass
class StartCase:
    source: str
    ready: Callable[[Child], bool]
    timeout: float
    error: str | None  # what ChildFailed says, or None: ready
    returncode: int  # after stop()
    log: str  # in the log (and in the error) after stop()


START = {
    "ready": StartCase(READY, logged_ready, 10, None, -15, "warming up"),
    "exits-early": StartCase(EXITS, lambda child: False, 10, "exited with code 2 before it was ready", 2,
                             "config is broken: line 3"),
    "never-ready": StartCase(SILENT, lambda child: False, 0.5, "not ready after 0.5 s", -15, "waiting"),
    "ready-check-raises": StartCase(SILENT, lambda child: 1 / 0, 0.5, "not ready after 0.5 s", -15, "waiting"),
}


@pytest.mark.parametrize("case", START.values(), ids=START.keys())
def test_start_and_wait_ready(case: StartCase) -> None:
    child = Child(script(case.source), name="case").start()
    started = time.monotonic()
    if case.error is None:
        assert child.wait_ready(lambda: case.ready(child), case.timeout) < case.timeout
        assert child.running() and not gone(child.pid)
        log_path = child.log_path
        assert child.stop() == case.returncode
        assert not log_path.exists()  # a temporary log is removed...
    else:
        with pytest.raises(ChildFailed) as failed:
            child.wait_ready(lambda: case.ready(child), case.timeout)
        assert case.error in str(failed.value) and f"(pid {child.pid})" in str(failed.value)
        assert case.log in str(failed.value) and case.log in failed.value.log_tail
        assert failed.value.returncode == case.returncode == child.returncode
        assert time.monotonic() - started < case.timeout + 5
    assert gone(child.pid)
    assert case.log in child.log_text()  # ...its text kept


@pytest.mark.parametrize("source,grace,returncode,at_least", [
    (READY, 5.0, -15, 0.0),  # SIGTERM ends it
    (DEAF, 0.5, -9, 0.5),  # SIGTERM ignored: SIGKILL after the grace period
], ids=["sigterm", "ignores-sigterm"])
def test_stop(source: str, grace: float, returncode: int, at_least: float) -> None:
    child = Child(script(source)).start()
    child.wait_ready(lambda: logged_ready(child), 10)
    started = time.monotonic()
    assert child.stop(grace) == returncode
    assert at_least <= time.monotonic() - started < grace + 3
    assert gone(child.pid)
    assert child.stop() == returncode  # again: nothing left to do


def test_stop_kills_what_is_left_in_the_process_group() -> None:
    with Child(script(WITH_WORKER)) as child:
        child.wait_ready(lambda: logged_ready(child), 10)
        worker = int(child.log_text().split("worker ")[1].split()[0])
        assert not gone(worker)
    assert child.returncode == -15
    assert poll_until(lambda: gone(worker), 5) is not None


def test_log_file_env_and_cwd(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "child.log"
    log.parent.mkdir()
    log.write_text("an earlier run\n")
    argv = script("import os; print(os.environ['GEOTM_A'], os.environ.get('GEOTM_B'), os.getcwd(), flush=True)")
    for env, expected in (({"GEOTM_B": "replaced", "PATH": os.environ["PATH"]}, "replaced"), (None, "None")):
        child = Child(argv, log, cwd=tmp_path, env=env, extra_env={"GEOTM_A": "added"}).start()
        assert child.wait(10) == 0
        child.stop()
        assert f"added {expected} {tmp_path}\n" in log.read_text()
    assert log.read_text().startswith("an earlier run\n")  # appended to, so a restarted child keeps one log


def test_on_line_sees_each_line_as_it_comes(tmp_path: Path) -> None:
    seen: list[tuple[str, float]] = []
    child = Child(script("print('one', flush=True); print('two', flush=True)"), tmp_path / "out.log",
                  on_line=lambda line, at: seen.append((line, at))).start()
    assert child.wait(10) == 0
    child.stop()
    assert [line for line, _ in seen] == ["one\n", "two\n"]
    assert all(abs(at - time.time()) < 30 for _, at in seen)
    assert (tmp_path / "out.log").read_text() == "one\ntwo\n"


def test_die_with_parent() -> None:
    """A parent starts a child that dies with it, prints its PID, and is SIGKILLed: the child goes too."""
    parent = subprocess.Popen(script("""
        import sys, time
        from dnsd.common.children import Child
        child = Child([sys.executable, "-c", "import time; time.sleep(60)"], die_with_parent=True).start()
        print(child.pid, flush=True)
        time.sleep(60)
    """), stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        orphan = int(parent.stdout.readline())
        assert not gone(orphan)
        parent.kill()
        parent.wait(10)
        assert poll_until(lambda: gone(orphan), 5) is not None
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)


def test_stop_all_stops_every_live_child() -> None:
    started = [Child(script(SILENT)).start() for _ in range(2)]
    children.stop_all(grace=2)
    assert all(child.returncode == -15 and gone(child.pid) for child in started)


def _raises(error: type[Exception]) -> Callable[[], bool]:
    def condition() -> bool:
        raise error("not yet")
    return condition


@pytest.mark.parametrize("condition,ignore,timeout,reached", [
    (lambda: True, (), 1.0, True),
    (lambda: False, (), 0.2, False),
    (_raises(OSError), (OSError,), 0.2, False),  # an ignored error is "not yet"
], ids=["at-once", "never", "ignored-error"])
def test_poll_until(condition, ignore, timeout: float, reached: bool) -> None:
    took = poll_until(condition, timeout, interval=0.01, ignore=ignore)
    assert (took is not None) is reached
    assert took is None or took < timeout


def test_poll_until_lets_other_errors_through() -> None:
    with pytest.raises(ValueError):
        poll_until(_raises(ValueError), 1.0, ignore=(OSError,))


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("::1", marks=pytest.mark.skipif(
    not _has_ipv6_loopback(), reason="no IPv6 loopback"))])
def test_free_port_is_free_for_udp_and_tcp(host: str) -> None:
    port = free_port(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as udp, socket.socket(family, socket.SOCK_STREAM) as tcp:
        udp.bind((host, port))
        tcp.bind((host, port))


def test_a_dnsd_whose_port_was_taken_first_starts_on_new_ones(tmp_path):
    """harness.dnsd picks its ports; when another process binds one first, it tries new ones."""
    import socket

    from tests import harness
    from tests.dnstest import EXAMPLE
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        proc = harness.dnsd(EXAMPLE)
        clashing = proc.port
        proc.port = taken.getsockname()[1]  # as if another process took the port free_port() gave
        proc.argv = [a.replace(f"127.0.0.1:{clashing}", f"127.0.0.1:{proc.port}") for a in proc.argv]
        with proc:
            assert proc.port != taken.getsockname()[1]
            assert harness.udp_answers("127.0.0.1", proc.port)
    finally:
        taken.close()
