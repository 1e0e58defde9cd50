"""The drill's network namespace: created with `ip netns add`, entered by this process with setns(2),
always deleted (with /etc/netns/<name>) on the way out, also from atexit.

Only addresses inside this namespace are used (10.77.0.0/24 on its loopback device), so the drill
never touches the host's network. `ip netns exec <name> CMD` gives a command the namespace plus a
private /etc/resolv.conf bind-mounted from /etc/netns/<name>/resolv.conf: that is the client
environment whose only resolver is dnsd.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

CLONE_NEWNET = 0x40000000
PREFIX = "gtdrill-"
RUN_NETNS = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")
IP_TIMEOUT = 15.0

_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int, nstype: int) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Delete namespaces a previous drill left behind (named gtdrill-<pid> with that pid gone),
    e.g. after a SIGKILL. Only our own naming scheme is touched."""
    removed = []
    if not RUN_NETNS.is_dir():
        return removed
    for entry in sorted(RUN_NETNS.iterdir()):
        suffix = entry.name[len(PREFIX):]
        if not entry.name.startswith(PREFIX) or not suffix.isdigit() or pid_alive(int(suffix)):
            continue
        ip("netns", "del", entry.name, check=False)
        shutil.rmtree(ETC_NETNS / entry.name, ignore_errors=True)
        removed.append(entry.name)
    return removed


class Namespace:
    """One network namespace owned by this process. `enter()` moves the calling thread (call it from
    the main thread before starting others: threads and children created later inherit it)."""

    def __init__(self, name: str | None = None):
        self.name = name or f"{PREFIX}{os.getpid()}"
        self.created = False
        self._made_etc_netns = False
        self._home_fd: int | None = None
        self._lock = threading.Lock()
        atexit.register(self.delete)

    @property
    def etc_dir(self) -> Path:
        return ETC_NETNS / self.name

    def create(self, addresses: tuple[str, ...], nameserver: str) -> None:
        ip("netns", "add", self.name)
        self.created = True
        self._made_etc_netns = not ETC_NETNS.exists()
        self.etc_dir.mkdir(parents=True, exist_ok=True)
        # ip netns exec bind-mounts this over /etc/resolv.conf: dnsd is the client's only resolver,
        # asked with a short timeout so a lost packet costs a second, not five.
        (self.etc_dir / "resolv.conf").write_text(
            f"# geotm drill: the client's resolver is dnsd\nnameserver {nameserver}\noptions timeout:1 attempts:3\n")
        ip("-n", self.name, "link", "set", "lo", "up")
        for address in addresses:
            ip("-n", self.name, "addr", "add", f"{address}/32", "dev", "lo")

    def enter(self) -> None:
        home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        target = os.open(RUN_NETNS / self.name, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(target, CLONE_NEWNET)
        finally:
            os.close(target)
        self._home_fd = home

    def leave(self) -> None:
        if self._home_fd is not None:
            try:
                setns(self._home_fd, CLONE_NEWNET)
            finally:
                os.close(self._home_fd)
                self._home_fd = None

    def exec_prefix(self) -> list[str]:
        """Run a command as a client: in the namespace, with /etc/netns/<name>/resolv.conf."""
        return ["ip", "netns", "exec", self.name]

    def leftover_pids(self) -> list[int]:
        result = ip("netns", "pids", self.name, check=False)
        return [int(p) for p in result.stdout.split() if p.isdigit()]

    def delete(self) -> None:
        """Idempotent. Anything still running inside the namespace was started by this drill (the
        namespace is private to it): those PIDs are killed so the namespace really goes away."""
        with self._lock:
            if threading.current_thread() is threading.main_thread():
                try:
                    self.leave()
                except OSError:
                    pass
            if self.created:
                for pid in self.leftover_pids():
                    if pid != os.getpid():
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                ip("netns", "del", self.name, check=False)
                self.created = False
            shutil.rmtree(self.etc_dir, ignore_errors=True)
            if self._made_etc_netns:
                try:
                    ETC_NETNS.rmdir()  # only if we made it and it is empty
                except OSError:
                    pass
                self._made_etc_netns = False
