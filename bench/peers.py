"""The servers bench/run compares (geotm's dnsd, Knot DNS, PowerDNS static and LUA, gdnsd): installing
the Debian packages of the peers, writing each server's config for the same names, and starting it
pinned to the server core until it answers."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import benchlib as bl
import peerconfig
from verify import dig

from dnsd.common.children import Child, free_port

ROOT = Path(__file__).resolve().parent.parent
SERVER_CORE = "0"
PACKAGES = ["knot", "pdns-server", "pdns-backend-bind", "gdnsd", "dnsperf", "dnsutils"]
# what each package must provide; a package counts as missing when its program is missing
PACKAGE_PROVIDES = {"knot": "knotd", "pdns-server": "pdns_server", "gdnsd": "gdnsd", "dnsperf": "dnsperf",
                    "dnsutils": "dig"}
# pid files the Debian packages' services would write if their postinst started them anyway
SERVICE_PIDFILES = {"/run/knot/knot.pid": "knotd", "/run/pdns/pdns.pid": "pdns_server",
                    "/run/gdnsd/gdnsd.pid": "gdnsd", "/run/unbound.pid": "unbound",
                    "/run/dnsmasq/dnsmasq.pid": "dnsmasq"}
START_TIMEOUT = 30.0


# ------------------------------------------------------------------------------------------
# installing the peers

def have(binary: str) -> bool:
    return shutil.which(binary) is not None or Path("/usr/sbin", binary).exists()


def _pkg_installed(pkg: str) -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
    return r.returncode == 0 and "install ok installed" in r.stdout


def missing_packages() -> list[str]:
    missing = [p for p in PACKAGES if p in PACKAGE_PROVIDES and not have(PACKAGE_PROVIDES[p])]
    if not _pkg_installed("pdns-backend-bind"):
        missing.append("pdns-backend-bind")
    return missing


def _service_pids() -> dict[int, str]:
    """The services of SERVICE_PIDFILES running now: pid -> program (pid file checked against its name)."""
    running = {}
    for pidfile, comm in SERVICE_PIDFILES.items():
        try:
            pid = int(Path(pidfile).read_text().split()[0])
            if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                running[pid] = comm
        except (OSError, ValueError, IndexError):
            pass
    return running


def install(missing: list[str] | None = None) -> None:
    """apt-get install the Debian packages in `missing` (default: the peers' missing_packages()),
    their services kept from starting."""
    if missing is None:
        missing = missing_packages()
    if not missing:
        bl.log("peers installed: " + ", ".join(PACKAGES))
        return
    if os.geteuid() != 0:
        raise SystemExit(f"missing Debian packages {missing} and not root: install them or use --skip-install")
    before = _service_pids()  # running before the install: not ours to stop
    policy = Path("/usr/sbin/policy-rc.d")
    created = False
    if not policy.exists():
        # tell invoke-rc.d not to start the packages' services (exit 101: action forbidden)
        policy.write_text("#!/bin/sh\n# written by geotm bench/run during apt-get install; removed after\nexit 101\n")
        policy.chmod(0o755)
        created = True
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        bl.log("apt-get update")
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "update", "-qq"], check=True, env=env)
        bl.log("apt-get install -y --no-install-recommends " + " ".join(missing))
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-qq",
                        "--no-install-recommends", *missing], check=True, env=env, stdout=subprocess.DEVNULL)
    finally:
        if created:
            policy.unlink(missing_ok=True)
    # if a service was started anyway, stop it by the PID in its own pid file
    for pid, comm in _service_pids().items():
        if pid not in before:
            bl.log(f"stopping {comm} (pid {pid}) started by its package")
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass


# ------------------------------------------------------------------------------------------
# the servers

@dataclass
class Server:
    name: str
    desc: str
    fixed: str | None            # replica the global name must resolve to (None: weighted pick)
    binary: str
    is_geotm: bool = False
    argv: list[str] = field(default_factory=list)
    port: int = 0
    child: Child | None = None


def all_servers() -> list[Server]:
    return [
        Server("geotm", "geotm dnsd (performance routing, example config, no health feed)", "eastus", "dnsd",
               is_geotm=True),
        Server("geotm-w2", "geotm dnsd --workers 2", "eastus", "dnsd", is_geotm=True),
        Server("knot", "Knot DNS, static records (tm hop fixed to eastus)", "eastus", "knotd"),
        Server("pdns", "PowerDNS + bind backend, static records (tm hop fixed to eastus)", "eastus", "pdns_server"),
        Server("pdns-lua", "PowerDNS + bind backend, tm hop LUA CNAME pickwhashed over 3 replica hosts", None,
               "pdns_server"),
        Server("gdnsd", "gdnsd, tm hop DYNA weighted over 3 replica addresses, health from extfile", None, "gdnsd"),
    ]


def dnsd_program() -> str:
    """The repo's .venv dnsd when there is one, else the one on PATH."""
    venv = ROOT / ".venv" / "bin" / "dnsd"
    return str(venv) if venv.exists() else "dnsd"


def dnsd_has_workers() -> bool:
    dnsd = ROOT / ".venv" / "bin" / "dnsd"
    try:
        r = subprocess.run([str(dnsd), "serve", "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--workers" in r.stdout


def prepare(s: Server, m: bl.ZoneModel, tmp: Path, config: Path) -> None:
    """Write the server's config for the names of `m` under tmp/<name>; set its port and argv."""
    d = tmp / s.name
    d.mkdir(parents=True, exist_ok=True)
    s.port = free_port()
    if s.name == "knot":
        (d / "run").mkdir(exist_ok=True)
        zf = d / f"{m.zone}.zone"
        zf.write_text(peerconfig.static_zone(m))
        (d / "knot.conf").write_text(peerconfig.knot_config(m.zone, s.port, str(d), str(zf)))
        s.argv = ["knotd", "-c", str(d / "knot.conf")]
    elif s.name in ("pdns", "pdns-lua"):
        zf = d / f"{m.zone}.zone"
        zf.write_text(peerconfig.pdns_lua_zone(m) if s.name == "pdns-lua" else peerconfig.static_zone(m))
        (d / "named.conf").write_text(peerconfig.pdns_named_conf(m, str(zf)))
        (d / "pdns.conf").write_text(peerconfig.pdns_config(s.port, str(d), lua=s.name == "pdns-lua"))
        s.argv = ["pdns_server", f"--config-dir={d}"]
    elif s.name == "gdnsd":
        (d / "zones").mkdir(exist_ok=True)
        (d / "zones" / m.zone).write_text(peerconfig.gdnsd_zone(m))
        health = d / "health"
        health.write_text(peerconfig.gdnsd_health_file(m))
        (d / "config").write_text(peerconfig.gdnsd_config(m, s.port, str(d / "run"), str(d / "state"), str(health)))
        s.argv = ["gdnsd", "-c", str(d), "start"]
    elif s.is_geotm:
        cfg = d / "geotm.yaml"
        cfg.write_text(peerconfig.geotm_bench_config(config, d, s.port))
        s.argv = [dnsd_program(), "serve", "--config", str(cfg), "--listen", f"127.0.0.1:{s.port}",
                  "--admin-listen", "off", "--log-level", "warning"]
        if s.name == "geotm-w2":
            s.argv += ["--workers", "2"]
    s.argv = ["taskset", "-c", SERVER_CORE, *s.argv]


def start(s: Server, log_path: Path, cwd: Path) -> Child:
    """Start the prepared server, its output in `log_path`."""
    s.child = Child(s.argv, log_path, name=s.name, cwd=cwd).start()
    return s.child


def wait_answering(s: Server, m: bl.ZoneModel, timeout: float = START_TIMEOUT) -> None:
    """Until the started server answers an SOA query for the zone. Raises ChildFailed (exit code and
    log tail), the server stopped, when it exits first or `timeout` seconds pass."""
    assert s.child is not None
    s.child.wait_ready(lambda: dig(s.port, m.fqdn("@"), "SOA", ["+time=1", "+tries=1"]) is not None,
                       timeout, interval=0.2)
