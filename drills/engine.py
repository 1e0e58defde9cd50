"""Docker engines of the drill's own (scripts/compose-drill): each a dockerd started here in a private
mount namespace with its own /etc/docker, data root, exec root and socket, so nothing of the host's
Docker (if any) is read or touched; stopped by its PID, with everything it made removed.

- Engine: the compose stack's engine, in a network namespace made for it. Its bridges, iptables
  chains and container addresses stay inside that namespace; its containers reach the package
  registries (image builds) through the host: a veth pair, IP forwarding and one masquerade rule,
  all removed with it. Its containers run in a cgroup of its own, so none outlives it, and a run
  that was killed is cleaned up by the next one (remove_stale).
- PullDaemon: a docker daemon as a registry client, in the network namespace of a container on the
  drill network, its only resolver dnsd and the drill CA trusted through its own certs.d. It runs no
  containers (no bridge, no iptables).
"""
from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from drills.dockerapi import Docker, DockerError
from drills.netns import pid_alive

PREFIX = "gtengine-"
COMMENT = "geotm-compose-drill"
HOST_END, NAMESPACE_END = "10.199.77.1", "10.199.77.2"  # the veth pair between the host and the engine
LINK_PREFIX = 30
BRIDGE = "10.199.78.1/24"  # the engine's default bridge (image builds), inside its namespace
RUN_NETNS = Path("/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
# what dockerd and containerd create outside their roots, whatever they are told: removed when empty
# and made by us
RUNTIME_DIRS = (Path("/run/docker/plugins"), Path("/run/docker"), Path("/run/containerd/s"), Path("/run/containerd"))
START_LIMIT = 60.0
STOP_GRACE = 30.0
COMMAND_TIMEOUT = 30.0
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


class EngineError(RuntimeError):
    pass


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                            stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise EngineError(f"{' '.join(argv)} failed: {result.stderr.strip()[-300:]}")
    return result


def _term_with_parent() -> None:
    """dockerd gets SIGTERM if the drill dies: it then stops its containers itself."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def storage_driver() -> str:
    """overlay2 where the kernel has overlayfs (fast, small), else vfs (copies every layer)."""
    chosen = os.environ.get("GEOTM_DOCKER_STORAGE_DRIVER")
    if chosen:
        return chosen
    try:
        return "overlay2" if "overlay" in Path("/proc/filesystems").read_text() else "vfs"
    except OSError:
        return "vfs"


ENGINE_PROGRAMS = ("dockerd", "containerd", "docker-proxy", "runc")  # and containerd-shim-runc-v2


def pids_mentioning(marker: str) -> list[int]:
    """Engine processes (dockerd, containerd, shims) whose command line contains `marker`, a path
    only our engine uses."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            program = (entry / "comm").read_text().strip()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if program.startswith(ENGINE_PROGRAMS) and marker in cmdline:
            found.append(int(entry.name))
    return found


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _cgroup_dirs(name: str) -> list[Path]:
    """Every cgroup directory named `name` at the top of a hierarchy (v1: one per controller; v2:
    one), with its descendants, deepest first."""
    tops = [CGROUP_ROOT / name] + [d / name for d in CGROUP_ROOT.iterdir() if d.is_dir()] \
        if CGROUP_ROOT.is_dir() else []
    found = []
    for top in tops:
        if top.is_dir():
            found.extend(sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)))
            found.append(top)
    return found


def sweep_cgroup(name: str) -> int:
    """Kill every process left in the cgroup `name` (containers whose engine died) and remove it;
    returns how many were killed."""
    killed = 0
    for _ in range(10):
        directories = _cgroup_dirs(name)
        if not directories:
            break
        for directory in directories:
            try:
                pids = [int(p) for p in (directory / "cgroup.procs").read_text().split()]
            except (OSError, ValueError):
                pids = []
            killed += len(pids)
            _kill(pids)
        for directory in directories:
            try:
                directory.rmdir()
            except OSError:
                pass
        time.sleep(0.2)
    return killed


class Dockerd:
    """One dockerd: `root` holds its config, exec root, socket, pid file, log and /etc/docker (which
    it sees at /etc/docker); `data_root` its images and containers; it runs in the network namespace
    `netns` (a path: /run/netns/NAME or /proc/PID/ns/net), with `resolv_conf` as its /etc/resolv.conf
    when given."""

    def __init__(self, root: Path, data_root: Path, netns: str, options: list[str],
                 resolv_conf: Path | None = None):
        self.root = root
        self.data_root = data_root
        self.netns = netns
        self.options = options
        self.resolv_conf = resolv_conf
        self.process: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def etc_docker(self) -> Path:
        return self.root / "etc-docker"

    @property
    def log(self) -> Path:
        return self.root / "dockerd.log"

    def api(self, timeout: float = 30.0) -> Docker:
        return Docker(str(self.socket), timeout=timeout)

    def start(self) -> None:
        for sub in ("exec", "etc-docker"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        (self.root / "daemon.json").write_text("{}\n")  # not the host's /etc/docker/daemon.json
        mounts = [f"mount --bind {self.etc_docker} /etc/docker"]
        if self.resolv_conf is not None:
            mounts.append(f"mount --bind {self.resolv_conf} /etc/resolv.conf")
        argv = ["dockerd", "--config-file", str(self.root / "daemon.json"), "--data-root", str(self.data_root),
                "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "dockerd.pid"),
                "-H", f"unix://{self.socket}", "--storage-driver", storage_driver(), *self.options]
        script = " && ".join(["mkdir -p /etc/docker", *mounts, "exec " + " ".join(argv)])
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                ["nsenter", f"--net={self.netns}", "unshare", "--mount", "--propagation", "private",
                 "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_term_with_parent)
        deadline = time.monotonic() + START_LIMIT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EngineError(f"dockerd exited ({self.process.returncode}): {self.log_tail()}")
            try:
                self.api(timeout=2).request("GET", "/_ping")
                return
            except (OSError, DockerError):
                time.sleep(0.2)
        raise EngineError(f"dockerd did not answer on {self.socket} within {START_LIMIT:.0f}s: {self.log_tail()}")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM (dockerd stops its containers, then its containerd), SIGKILL after STOP_GRACE; then
        whatever still names our root (containerd, shims) is killed."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        _kill(pids_mentioning(str(self.root) + "/"))
        self.process = None


class Engine:
    """The compose stack's engine: a dockerd in a network namespace of its own (see the module doc).
    `root` (created) holds everything but the data root."""

    def __init__(self, root: Path, data_root: Path):
        self.name = f"{PREFIX}{os.getpid()}"
        self.root = root / self.name  # every process of the engine names this path: found even if killed
        self.host_link = f"gte{os.getpid()}h"[:15]
        self.rules: list[tuple[str, list[str]]] = []  # (table, rule) added to the host's iptables
        self.set_forwarding = False
        self.made_dirs: list[Path] = []
        self.netns_created = False
        self.dockerd = Dockerd(self.root, data_root, str(RUN_NETNS / self.name),
                               ["--bip", BRIDGE, "--cgroup-parent", self.name])

    @property
    def socket(self) -> Path:
        return self.dockerd.socket

    def start(self) -> None:
        remove_stale()
        self.made_dirs = [d for d in RUNTIME_DIRS if not d.exists()]
        self.root.mkdir(parents=True, exist_ok=True)
        ns_link = f"gte{os.getpid()}n"[:15]
        _run("ip", "netns", "add", self.name)
        self.netns_created = True
        _run("ip", "link", "add", self.host_link, "type", "veth", "peer", "name", ns_link)
        _run("ip", "link", "set", ns_link, "netns", self.name)
        _run("ip", "addr", "add", f"{HOST_END}/{LINK_PREFIX}", "dev", self.host_link)
        _run("ip", "link", "set", self.host_link, "up")
        for args in (("addr", "add", f"{NAMESPACE_END}/{LINK_PREFIX}", "dev", ns_link), ("link", "set", ns_link, "up"),
                     ("link", "set", "lo", "up"), ("route", "add", "default", "via", HOST_END)):
            _run("ip", "-n", self.name, *args)
        if IP_FORWARD.read_text().strip() != "1":
            IP_FORWARD.write_text("1\n")
            self.set_forwarding = True
        tag = ["-m", "comment", "--comment", f"{COMMENT} {self.name}"]
        for table, rule in (("nat", ["POSTROUTING", "-s", f"{NAMESPACE_END}/32", "!", "-o", self.host_link,
                                     "-j", "MASQUERADE"]),
                            ("filter", ["FORWARD", "-i", self.host_link, "-j", "ACCEPT"]),
                            ("filter", ["FORWARD", "-o", self.host_link, "-j", "ACCEPT"])):
            _run("iptables", "-w", "-t", table, "-I", *rule, *tag)
            self.rules.append((table, rule + tag))
        self.dockerd.start()

    def stop(self) -> list[str]:
        """Everything the engine made, removed; returns what had to be forced (empty: a clean stop)."""
        forced = []
        self.dockerd.stop()
        killed = sweep_cgroup(self.name)
        if killed:
            forced.append(f"{killed} container processes killed")
        for table, rule in self.rules:
            _run("iptables", "-w", "-t", table, "-D", *rule, check=False)
        self.rules = []
        _run("ip", "link", "del", self.host_link, check=False)  # both ends: the namespace's goes too
        if self.netns_created:
            left = [int(p) for p in _run("ip", "netns", "pids", self.name, check=False).stdout.split() if p.isdigit()]
            if left:
                forced.append(f"{len(left)} processes left in the namespace killed")
                _kill(left)
            _run("ip", "netns", "del", self.name, check=False)
            self.netns_created = False
        if self.set_forwarding:
            IP_FORWARD.write_text("0\n")
            self.set_forwarding = False
        for directory in self.made_dirs:
            remove_stale_sockets(directory)
            try:
                directory.rmdir()
            except OSError:
                pass
        return forced


def remove_stale_sockets(directory: Path) -> None:
    """Unix sockets nobody listens on any more (a killed containerd shim's, in /run/containerd/s)."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if not entry.is_socket():
            continue
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(entry))
        except ConnectionRefusedError:
            entry.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            probe.close()


def remove_stale() -> list[str]:
    """What an engine of a killed run left: its namespace, processes, cgroup and iptables rules
    (named gtengine-<pid> with that pid gone). Only our own naming scheme is touched."""
    removed = []
    names = {p.name for p in RUN_NETNS.iterdir()} if RUN_NETNS.is_dir() else set()
    for table in ("nat", "filter"):
        for line in _run("iptables", "-w", "-t", table, "-S", check=False).stdout.splitlines():
            found = re.search(rf'--comment "?{COMMENT} ({PREFIX}\d+)', line)
            if found:
                names.add(found.group(1))
    for name in sorted(names):
        suffix = name[len(PREFIX):]
        if not name.startswith(PREFIX) or not suffix.isdigit() or pid_alive(int(suffix)):
            continue
        _kill(pids_mentioning(f"/{name}/"))
        sweep_cgroup(name)
        for table in ("nat", "filter"):
            for line in _run("iptables", "-w", "-t", table, "-S", check=False).stdout.splitlines():
                if f"{COMMENT} {name}" in line and line.startswith("-A "):
                    _run("iptables", "-w", "-t", table, *_split_rule("-D " + line[3:]), check=False)
        if (RUN_NETNS / name).exists():
            _kill([int(p) for p in _run("ip", "netns", "pids", name, check=False).stdout.split() if p.isdigit()])
            _run("ip", "netns", "del", name, check=False)
        _run("ip", "link", "del", f"gte{suffix}h"[:15], check=False)
        removed.append(name)
    return removed


def _split_rule(text: str) -> list[str]:
    """An `iptables -S` line as arguments (its comment is the only quoted part)."""
    parts, quoted = [], re.split(r'"([^"]*)"', text)
    for index, chunk in enumerate(quoted):
        parts.extend([chunk] if index % 2 else chunk.split())
    return parts


class PullDaemon:
    """A dockerd as a registry client in the network namespace `netns` (a container's, on the drill
    network): `nameserver` is its only resolver, `trusted` (host name -> CA PEM) its certs.d."""

    def __init__(self, root: Path, netns: str, nameserver: str, trusted: dict[str, str]):
        self.root = root
        resolv = root / "resolv.conf"
        self.dockerd = Dockerd(root, root / "data", netns,
                               ["--bridge", "none", "--iptables=false", "--ip-forward=false", "--ip-masq=false"],
                               resolv_conf=resolv)
        self.nameserver = nameserver
        self.trusted = trusted

    @property
    def socket(self) -> Path:
        return self.dockerd.socket

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "resolv.conf").write_text(
            f"# geotm compose drill: the docker daemon's only resolver is dnsd\nnameserver {self.nameserver}\n")
        for host, pem in self.trusted.items():
            directory = self.dockerd.etc_docker / "certs.d" / host
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "ca.crt").write_text(pem)
        self.dockerd.start()

    def stop(self) -> None:
        self.dockerd.stop()
