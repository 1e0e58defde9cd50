"""geotm benchmark: geotm's dnsd against Knot DNS, PowerDNS (static and LUA) and gdnsd serving the
same names, measured with dnsperf on loopback. Run through `bench/run`; see bench/README.md."""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import benchlib as bl  # noqa: E402

PACKAGES = ["knot", "pdns-server", "pdns-backend-bind", "gdnsd", "dnsperf", "dnsutils"]
SERVER_CORE = "0"
LOAD_CORE = "1"
WARMUP_S = 2
CLIENTS = 4
OUTSTANDING = 200
ECS_SUBNET = "203.0.113.0/24"     # a client network geotm maps to southeastasia
VNET_SOURCE = "127.0.0.70"        # inside geotm's corp-vnet view (127.0.0.64/26)
DEFAULT_RATE = 5000               # fixed load when geotm was not measured

_children: dict[int, subprocess.Popen] = {}   # every process we started, by PID


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# installing the peers

def _have(binary: str) -> bool:
    return shutil.which(binary) is not None or Path("/usr/sbin", binary).exists()


def _pkg_installed(pkg: str) -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
    return r.returncode == 0 and "install ok installed" in r.stdout


# what each package must provide; a package counts as missing when its program is missing
PACKAGE_PROVIDES = {"knot": "knotd", "pdns-server": "pdns_server", "gdnsd": "gdnsd", "dnsperf": "dnsperf",
                    "dnsutils": "dig"}


def missing_packages() -> list[str]:
    missing = [p for p in PACKAGES if p in PACKAGE_PROVIDES and not _have(PACKAGE_PROVIDES[p])]
    if not _pkg_installed("pdns-backend-bind"):
        missing.append("pdns-backend-bind")
    return missing


# pid files the Debian packages' services would write if their postinst started them anyway
SERVICE_PIDFILES = {"/run/knot/knot.pid": "knotd", "/run/pdns/pdns.pid": "pdns_server",
                    "/run/gdnsd/gdnsd.pid": "gdnsd"}


def install() -> None:
    missing = missing_packages()
    if not missing:
        log("peers installed: " + ", ".join(PACKAGES))
        return
    if os.geteuid() != 0:
        raise SystemExit(f"missing Debian packages {missing} and not root: install them or use --skip-install")
    policy = Path("/usr/sbin/policy-rc.d")
    created = False
    if not policy.exists():
        # tell invoke-rc.d not to start the packages' services (exit 101: action forbidden)
        policy.write_text("#!/bin/sh\n# written by geotm bench/run during apt-get install; removed after\nexit 101\n")
        policy.chmod(0o755)
        created = True
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        log("apt-get update")
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "update", "-qq"], check=True, env=env)
        log("apt-get install -y " + " ".join(missing))
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-qq", *missing],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    finally:
        if created:
            policy.unlink(missing_ok=True)
    # if a service was started anyway, stop it by its own pid file
    for pidfile, comm in SERVICE_PIDFILES.items():
        try:
            pid = int(Path(pidfile).read_text().split()[0])
            if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                log(f"stopping {comm} (pid {pid} from {pidfile}) started by its package")
                os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            pass


# ------------------------------------------------------------------------------------------
# processes

def free_port() -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def start(argv: list[str], logfile: Path, cwd: Path) -> subprocess.Popen:
    fh = open(logfile, "wb")
    p = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
                         start_new_session=True)
    fh.close()
    _children[p.pid] = p
    return p


def stop(p: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process we started, by its PID; SIGKILL after `grace`; then anything left in its
    own process group (workers it forked), which only our child can have created."""
    if p.poll() is None:
        try:
            os.kill(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(5)
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _children.pop(p.pid, None)


def group_cpu_seconds(pgid: int) -> float:
    """user + system CPU seconds of every live process in process group `pgid` (a server we
    started in its own session, and any workers it forked)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after the command: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def stop_all() -> None:
    for p in list(_children.values()):
        stop(p, grace=3.0)


# ------------------------------------------------------------------------------------------
# dig

@dataclass
class DigAnswer:
    rcode: str
    flags: set[str]
    answer: list[tuple[str, int, str, str]]      # (owner, ttl, type, rdata)
    authority: list[tuple[str, int, str, str]]
    raw: str


def dig(port: int, name: str, qtype: str = "A", extra: list[str] | None = None) -> DigAnswer | None:
    argv = ["dig", "@127.0.0.1", "-p", str(port), name, qtype, "+norec", "+time=2", "+tries=2", *(extra or [])]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return None
    out = r.stdout
    mm = re.search(r"status: ([A-Z]+)", out)
    if not mm:
        return None
    flags = set((re.search(r"flags: ([a-z ]*);", out) or re.search("()", "")).group(1).split())
    sections: dict[str, list] = {"ANSWER": [], "AUTHORITY": []}
    cur = None
    for line in out.splitlines():
        hm = re.match(r";; ([A-Z]+) SECTION:", line)
        if hm:
            cur = hm.group(1)
            continue
        if not line.strip() or line.startswith(";"):
            if not line.strip():
                cur = None
            continue
        if cur in sections:
            parts = line.split(None, 4)
            if len(parts) == 5:
                sections[cur].append((parts[0].lower(), int(parts[1]), parts[3], parts[4]))
    return DigAnswer(mm.group(1), flags, sections["ANSWER"], sections["AUTHORITY"], out)


def check_global(m: bl.ZoneModel, a: DigAnswer | None, fixed: str | None, reg: str) -> tuple[bool, str]:
    """The global name's chain: global -> privatelink -> tm -> (CNAME replica host -> A) or (A at tm).
    `fixed`: the replica that must be chosen, or None for a weighted pick (any replica)."""
    if a is None:
        return False, "no answer"
    if a.rcode != "NOERROR" or "aa" not in a.flags:
        return False, f"rcode {a.rcode} flags {sorted(a.flags)}"
    want = [(m.fqdn(m.global_name(reg)), "CNAME", m.fqdn(m.privatelink_name(reg))),
            (m.fqdn(m.privatelink_name(reg)), "CNAME", m.fqdn(m.tm_name(reg)))]
    got = [(o, t, d.lower()) for o, _, t, d in a.answer]
    if got[:2] != want:
        return False, f"chain starts {got[:2]}, want {want}"
    reps = {r.name: r for r in next(x for x in m.registries if x.name == reg).replicas}
    tail = got[2:]
    tm = m.fqdn(m.tm_name(reg))
    chosen = None
    if len(tail) == 2 and tail[0][:2] == (tm, "CNAME") and tail[1][1] == "A":
        for name, rep in reps.items():
            if tail[0][2] == m.fqdn(m.replica_host(reg, name)) and tail[1][0] == tail[0][2] \
                    and tail[1][2] in rep.addresses:
                chosen = name
    elif len(tail) == 1 and tail[0][:2] == (tm, "A"):      # gdnsd: DYNA at the tm name
        for name, rep in reps.items():
            if tail[0][2] in rep.addresses:
                chosen = name
    if chosen is None:
        return False, f"bad tail of chain {tail}"
    if fixed and chosen != fixed:
        return False, f"chose {chosen}, want {fixed}"
    return True, f"chain ok, replica {chosen} ({'fixed' if fixed else 'weighted pick'})"


def verify(m: bl.ZoneModel, port: int, fixed: str | None, is_geotm: bool) -> tuple[bool, list[str]]:
    notes: list[str] = []
    ok = True
    reg = m.registries[0].name
    good, why = check_global(m, dig(port, m.fqdn(m.global_name(reg))), fixed, reg)
    notes.append(f"global A: {why}")
    ok &= good
    rep = m.registries[0].replicas[1]
    a = dig(port, m.fqdn(m.regional_name(reg, rep.name)))
    good = bool(a and a.rcode == "NOERROR" and [x[2] for x in a.answer] == ["CNAME", "A"]
                and a.answer[-1][3] in rep.addresses)
    notes.append(f"regional A: {'ok' if good else 'WRONG ' + (str(a.answer) if a else 'no answer')}")
    ok &= good
    a = dig(port, m.fqdn(m.data_name(reg, rep.name)))
    good = bool(a and a.rcode == "NOERROR" and a.answer and a.answer[-1][3] in rep.addresses)
    notes.append(f"data A: {'ok' if good else 'WRONG'}")
    ok &= good
    a = dig(port, m.fqdn(m.global_name(reg)), "AAAA")
    good = bool(a and a.rcode == "NOERROR" and not any(x[2] == "AAAA" for x in a.answer)
                and any(x[2] == "SOA" for x in a.authority) and any(x[2] == "CNAME" for x in a.answer))
    notes.append(f"AAAA NODATA after chain: {'ok' if good else 'WRONG'}")
    ok &= good
    a = dig(port, m.fqdn("nx0"))
    good = bool(a and a.rcode == "NXDOMAIN" and any(x[2] == "SOA" for x in a.authority))
    notes.append(f"NXDOMAIN: {'ok' if good else 'WRONG'}")
    ok &= good
    a = dig(port, m.fqdn("@"), "SOA")
    good = bool(a and a.rcode == "NOERROR" and a.answer and a.answer[0][2] == "SOA")
    notes.append(f"SOA: {'ok' if good else 'WRONG'}")
    ok &= good
    a = dig(port, m.fqdn("@"), "NS")
    good = bool(a and a.rcode == "NOERROR" and a.answer and a.answer[0][2] == "NS")
    notes.append(f"NS: {'ok' if good else 'WRONG'}")
    ok &= good
    # ECS and VNet source: geotm answers differently, the peers ignore both (reported, not required)
    a = dig(port, m.fqdn(m.global_name(reg)), "A", [f"+subnet={ECS_SUBNET}"])
    notes.append(f"with ECS {ECS_SUBNET}: final {a.answer[-1][3] if a and a.answer else '-'}")
    a = dig(port, m.fqdn(m.global_name(reg)), "A", ["-b", VNET_SOURCE])
    notes.append(f"from {VNET_SOURCE}: final {a.answer[-1][3] if a and a.answer else '-'}")
    return bool(ok), notes


# ------------------------------------------------------------------------------------------
# servers

@dataclass
class Server:
    name: str
    desc: str
    fixed: str | None            # replica the global name must resolve to (None: weighted pick)
    binary: str
    is_geotm: bool = False
    argv: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen | None = None


def prepare(s: Server, m: bl.ZoneModel, tmp: Path, config: Path) -> None:
    d = tmp / s.name
    d.mkdir(parents=True, exist_ok=True)
    s.port = free_port()
    if s.name == "knot":
        (d / "run").mkdir(exist_ok=True)
        zf = d / f"{m.zone}.zone"
        zf.write_text(bl.static_zone(m))
        (d / "knot.conf").write_text(bl.knot_config(m, s.port, str(d), str(zf)))
        s.argv = ["knotd", "-c", str(d / "knot.conf")]
    elif s.name in ("pdns", "pdns-lua"):
        zf = d / f"{m.zone}.zone"
        zf.write_text(bl.pdns_lua_zone(m) if s.name == "pdns-lua" else bl.static_zone(m))
        (d / "named.conf").write_text(bl.pdns_named_conf(m, str(zf)))
        (d / "pdns.conf").write_text(bl.pdns_config(s.port, str(d), lua=s.name == "pdns-lua"))
        s.argv = ["pdns_server", f"--config-dir={d}"]
    elif s.name == "gdnsd":
        (d / "zones").mkdir(exist_ok=True)
        (d / "zones" / m.zone).write_text(bl.gdnsd_zone(m))
        health = d / "health"
        health.write_text(bl.gdnsd_health_file(m))
        (d / "config").write_text(bl.gdnsd_config(m, s.port, str(d / "run"), str(d / "state"), str(health)))
        s.argv = ["gdnsd", "-c", str(d), "start"]
    elif s.is_geotm:
        cfg = d / "geotm.yaml"
        cfg.write_text(bl.geotm_bench_config(config, d, s.port))
        dnsd = str(ROOT / ".venv" / "bin" / "dnsd") if (ROOT / ".venv" / "bin" / "dnsd").exists() else "dnsd"
        s.argv = [dnsd, "serve", "--config", str(cfg), "--listen", f"127.0.0.1:{s.port}",
                  "--admin-listen", "off", "--log-level", "warning"]
        if s.name == "geotm-w2":
            s.argv += ["--workers", "2"]
    s.argv = ["taskset", "-c", SERVER_CORE, *s.argv]


def wait_ready(s: Server, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if s.proc.poll() is not None:
            return False
        a = dig(s.port, "azurecr.test.", "SOA", ["+time=1", "+tries=1"])
        if a is not None:
            return True
        time.sleep(0.2)
    return False


def dnsd_has_workers() -> bool:
    dnsd = ROOT / ".venv" / "bin" / "dnsd"
    try:
        r = subprocess.run([str(dnsd), "serve", "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--workers" in r.stdout


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


# ------------------------------------------------------------------------------------------
# dnsperf

def dnsperf_argv(port: int, qfile: Path, seconds: float, extra: list[str]) -> list[str]:
    return ["taskset", "-c", LOAD_CORE, "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile),
            "-l", f"{seconds:g}", "-c", str(CLIENTS), "-q", str(OUTSTANDING), *extra]


def run_dnsperf(argv: list[str], timeout: float, outfile: Path | None = None) -> tuple[int, str]:
    """Run dnsperf to completion (bounded by `timeout`); its output goes to `outfile` when given
    (the -v run: a file costs dnsperf less than a pipe someone must keep draining)."""
    fh = open(outfile, "w+") if outfile else None
    p = subprocess.Popen(argv, stdout=fh or subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         text=True, start_new_session=True)
    _children[p.pid] = p
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(p)
        out = ""
    _children.pop(p.pid, None)
    if fh:
        fh.seek(0)
        out = fh.read()
        fh.close()
    return p.returncode if p.returncode is not None else -1, out or ""


VARIANTS = {
    "main": [],
    "ecs": ["-E", f"8:{bl.ecs_option_hex(ECS_SUBNET)}"],
    "vnet": ["-a", VNET_SOURCE],
}
VARIANT_LABEL = {"main": "", "ecs": " +ecs", "vnet": " vnet-src"}


def measure(s: Server, qfile: Path, seconds: float, runs: int, variant_runs: int, result: dict,
            commands: list[str]) -> None:
    for variant, extra in VARIANTS.items():
        n = runs if variant == "main" else variant_runs
        if n <= 0:
            continue
        vres = result["variants"].setdefault(variant, {"runs": []})
        for i in range(n):
            warm = dnsperf_argv(s.port, qfile, WARMUP_S, extra)
            run_dnsperf(warm, WARMUP_S + 30)
            argv = dnsperf_argv(s.port, qfile, seconds, extra)
            if i == 0:
                commands.append(shlex.join(warm) + "    # warm-up before every measured run, discarded")
                commands.append(shlex.join(argv))
            cpu0, t0 = group_cpu_seconds(s.proc.pid), time.monotonic()
            rc, out = run_dnsperf(argv, seconds + 60)
            cpu1, t1 = group_cpu_seconds(s.proc.pid), time.monotonic()
            try:
                parsed = bl.parse_dnsperf(out)
            except ValueError:
                parsed = {"error": f"dnsperf exit {rc}", "output": out[-2000:]}
            parsed["argv"] = argv
            # the server's CPU use during the run (all its processes), to tell a server-bound
            # figure (near 1.0 core) from a dnsperf-bound one
            parsed["server_cpu_cores"] = (cpu1 - cpu0) / (t1 - t0) if t1 > t0 else None
            vres["runs"].append(parsed)
            log(f"{s.name} {variant} run {i + 1}/{n}: {parsed.get('qps', 'FAILED')} qps, "
                f"lost {parsed.get('queries_lost', '-')}")


def measure_latency(s: Server, qfile: Path, seconds: float, runs: int, rate: int, result: dict,
                    commands: list[str], tmp: Path) -> None:
    """`runs` runs at the fixed `rate`, each after a warm-up; the row shows the median of the runs'
    mean and p99 (one run is easily spoiled by a neighbour on a shared machine)."""
    # -T 1: one send/receive thread pair. With -v and several threads on one core, dnsperf's own
    # printing adds milliseconds to the p99 (measured against Knot at 60k qps: p99 3.9 ms with the
    # default threads, 0.14 ms with -T 1; mean 0.027 ms against 0.036 ms without -v).
    extra = ["-T", "1", "-Q", str(rate)]
    out_runs = []
    for i in range(max(1, runs)):
        warm = dnsperf_argv(s.port, qfile, WARMUP_S, extra)
        run_dnsperf(warm, WARMUP_S + 30)
        argv = dnsperf_argv(s.port, qfile, seconds, [*extra, "-v"])
        outfile = tmp / f"{s.name}-latency.txt"
        if i == 0:
            commands.append(shlex.join(warm) + "    # warm-up before every latency run, discarded")
            commands.append(shlex.join(argv) + f" > {outfile.name}    # fixed load, per-query latencies from -v")
        rc, out = run_dnsperf(argv, seconds + 60, outfile)
        outfile.unlink(missing_ok=True)
        lat, codes = bl.parse_verbose_latencies(out)
        try:
            summary = bl.parse_dnsperf(out)
        except ValueError:
            summary = {"error": f"dnsperf exit {rc}"}
        run = {
            "argv": argv, "summary": summary, "answers": len(lat), "rcodes_seen": codes,
            "mean_ms": (sum(lat) / len(lat) * 1000) if lat else None,
            "p50_ms": bl.percentile(lat, 50) * 1000 if lat else None,
            "p99_ms": bl.percentile(lat, 99) * 1000 if lat else None,
            "p999_ms": bl.percentile(lat, 99.9) * 1000 if lat else None,
        }
        run["saturated"] = bool(summary.get("qps") and summary["qps"] < 0.95 * rate)
        out_runs.append(run)
        log(f"{s.name} latency run {i + 1} at {rate} qps: mean {_ms(run['mean_ms'])} ms, p99 {_ms(run['p99_ms'])} ms")
    good = [r for r in out_runs if r["p99_ms"] is not None]
    result["latency"] = {
        "rate": rate, "runs": out_runs,
        "mean_ms": bl.median([r["mean_ms"] for r in good]) if good else None,
        "p99_ms": bl.median([r["p99_ms"] for r in good]) if good else None,
        "saturated": any(r["saturated"] for r in out_runs),
    }


def _ms(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def versions() -> dict:
    out = {}
    for name, argv in {"knotd": ["knotd", "--version"], "pdns_server": ["pdns_server", "--version"],
                       "gdnsd": ["gdnsd", "-h"], "dnsperf": ["dnsperf", "-h"]}.items():
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            text = r.stdout + r.stderr
            mm = re.search(r"(?:version|Version|Server)\s+v?([0-9][0-9.]*)", text)
            out[name] = mm.group(1) if mm else None
        except (OSError, subprocess.TimeoutExpired):
            out[name] = None
    return out


# ------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    ap.add_argument("--seconds", type=float, default=15, help="measured seconds per dnsperf run (default 15)")
    ap.add_argument("--runs", type=int, default=3, help="measured runs per server of the main mix and of the fixed-load latency run (default 3)")
    ap.add_argument("--variant-runs", type=int, default=1,
                    help="runs of the ECS and VNet-source rows (default 1; 0 leaves them out)")
    ap.add_argument("--only", default="", help="comma-separated servers: geotm,geotm-w2,knot,pdns,pdns-lua,gdnsd")
    ap.add_argument("--skip-install", action="store_true", help="do not apt-get install missing peers")
    ap.add_argument("--rate", type=int, default=0,
                    help="fixed load (qps) for the latency run; default half of geotm's measured qps")
    ap.add_argument("--config", default=str(ROOT / "config" / "example.yaml"), help="geotm config to mirror")
    ap.add_argument("--json", default=str(HERE / "results" / "latest.json"), help="raw results file")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    args = ap.parse_args(argv)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # also SIGINT: a shell that starts us in the background leaves SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler of its own
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    servers = all_servers()
    if not dnsd_has_workers():
        servers = [s for s in servers if s.name != "geotm-w2"]
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = set(wanted) - {s.name for s in all_servers()}
        if unknown:
            ap.error(f"unknown server(s) {sorted(unknown)}")
        if "geotm-w2" in wanted and not any(s.name == "geotm-w2" for s in servers):
            log("geotm-w2 skipped: `dnsd serve --help` has no --workers")
        servers = [s for s in servers if s.name in wanted]

    if not args.skip_install:
        install()
    for tool in ("dnsperf", "dig", "taskset"):
        if not _have(tool):
            log(f"{tool} is missing")
            return 2
    if (os.cpu_count() or 1) < 2:
        log("needs 2 cores (server on core 0, dnsperf on core 1)")
        return 2

    m = bl.load_model(args.config)
    tmp = Path(tempfile.mkdtemp(prefix="geotm-bench-"))
    failed: list[str] = []
    results: dict = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": args.seconds, "runs": args.runs,
        "variant_runs": args.variant_runs, "warmup_s": WARMUP_S, "clients": CLIENTS, "outstanding": OUTSTANDING,
        "ecs_subnet": ECS_SUBNET, "vnet_source": VNET_SOURCE, "versions": versions(), "servers": {},
    }
    commands: list[str] = []
    rate = args.rate
    try:
        qfile = tmp / "queries.txt"
        lines = bl.query_lines(m)
        qfile.write_text("\n".join(lines) + "\n")
        mix = {}
        for line in lines:
            c = bl.classify_query(m, line)
            mix[c] = mix.get(c, 0) + 1
        results["query_mix"] = mix
        results["query_file_lines"] = len(lines)
        for s in servers:
            res = results["servers"].setdefault(s.name, {"desc": s.desc, "variants": {}})
            if not _have(s.binary) and not s.is_geotm:
                log(f"{s.name}: {s.binary} not installed")
                res["error"] = f"{s.binary} not installed"
                failed.append(s.name)
                continue
            prepare(s, m, tmp, Path(args.config))
            res["argv"] = s.argv
            res["port"] = s.port
            commands.append(f"# {s.name}: {s.desc}")
            commands.append(shlex.join(s.argv))
            log(f"starting {s.name}: {shlex.join(s.argv)}")
            s.proc = start(s.argv, tmp / f"{s.name}.log", tmp / s.name)
            res["pid"] = s.proc.pid
            try:
                if not wait_ready(s):
                    logtail = (tmp / f"{s.name}.log").read_text(errors="replace")[-3000:]
                    log(f"{s.name} did not start (exit {s.proc.poll()}):\n{logtail}")
                    res["error"] = "did not start"
                    res["log"] = logtail
                    failed.append(s.name)
                    continue
                good, notes = verify(m, s.port, s.fixed, s.is_geotm)
                res["verify"] = notes
                for n in notes:
                    log(f"{s.name} verify: {n}")
                if not good:
                    res["error"] = "wrong answers (not measured)"
                    failed.append(s.name)
                    continue
                res["loadavg_before"] = os.getloadavg()
                measure(s, qfile, args.seconds, args.runs, args.variant_runs, res, commands)
                if not rate:
                    gq = results["servers"].get("geotm", {}).get("variants", {}).get("main", {}).get("runs", [])
                    qps = [r["qps"] for r in gq if "qps" in r]
                    rate = int(bl.median(qps) / 2) if qps else DEFAULT_RATE
                    results["rate_from"] = "half of geotm's median qps" if qps else "default"
                measure_latency(s, qfile, args.seconds, args.runs, rate, res, commands, tmp)
                if s.proc.poll() is not None:
                    res["error"] = f"exited during the run (status {s.proc.returncode})"
                    failed.append(s.name)
            finally:
                stop(s.proc)
        results["rate"] = rate
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        stop_all()
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        return 130
    finally:
        stop_all()
    if args.keep_tmp:
        log(f"temp dir kept: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = build_rows(results)
    results["rows"] = rows
    results["commands"] = commands
    results["failed"] = failed
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")

    print(f"geotm benchmark: {args.runs} x {args.seconds:g} s per server (median), {WARMUP_S} s warm-up before "
          f"each run excluded; server on core {SERVER_CORE}, dnsperf on core {LOAD_CORE}; "
          f"latency at a fixed {rate} qps")
    print(f"query mix ({len(lines)} lines): " + ", ".join(f"{k} {v}" for k, v in sorted(mix.items())))
    print()
    print(bl.format_table(rows))
    print()
    for name in failed:
        print(f"FAILED {name}: {results['servers'][name].get('error')}")
    sat = [r["server"] for r in rows if r.get("saturated")]
    if sat:
        print(f"note: {', '.join(sat)} could not sustain {rate} qps in the latency run: its latency is queueing")
    print("ratio = geotm qps / this server's qps in the same row kind (main, +ecs, vnet-src); "
          "srv_cpu = server cores busy during the measured runs (below ~0.95: dnsperf-bound)")
    print()
    print("commands:")
    for c in commands:
        print("  " + c)
    print(f"\nraw results: {args.json}")
    return 1 if failed else 0


def build_rows(results: dict) -> list[dict]:
    rows = []
    geotm_qps: dict[str, float] = {}
    for name, res in results["servers"].items():
        for variant, v in res.get("variants", {}).items():
            qps = [r["qps"] for r in v["runs"] if "qps" in r]
            v["median_qps"] = bl.median(qps) if qps else None
            if name == "geotm" and qps:
                geotm_qps[variant] = v["median_qps"]
    for name, res in results["servers"].items():
        for variant in VARIANTS:
            v = res.get("variants", {}).get(variant)
            if not v or not v["runs"]:
                continue
            runs = [r for r in v["runs"] if "qps" in r]
            row = {"server": name + VARIANT_LABEL[variant], "qps": v.get("median_qps"),
                   "mean_ms": bl.median([r["avg_latency_s"] * 1000 for r in runs if "avg_latency_s" in r]) if runs
                   else None,
                   "lost": sum(r.get("queries_lost", 0) for r in runs) if runs else None,
                   "cpu": bl.median([r["server_cpu_cores"] for r in runs if r.get("server_cpu_cores") is not None])
                   if runs else None,
                   "ratio": None, "rate_mean_ms": None, "p99_ms": None}
            if variant == "main" and "latency" in res:
                row["rate_mean_ms"] = res["latency"].get("mean_ms")
                row["p99_ms"] = res["latency"].get("p99_ms")
                row["saturated"] = res["latency"].get("saturated")
            if not name.startswith("geotm") and geotm_qps.get(variant) and row["qps"]:
                row["ratio"] = geotm_qps[variant] / row["qps"]
            rows.append(row)
    return rows


if __name__ == "__main__":
    sys.exit(main())
